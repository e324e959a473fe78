/* Reader-writer locks. argv[1]:
 *   "read-read":  T1 read-locks A then B, T2 read-locks B then A. Readers do
 *                 not block readers: not a deadlock.
 *   "write-read": T1 read-locks A then write-locks B, T2 read-locks B then
 *                 write-locks A: each writer waits for the other's reader. */
#include "facts.h"
#include <pthread.h>
#include <string.h>

static pthread_rwlock_t a = PTHREAD_RWLOCK_INITIALIZER;
static pthread_rwlock_t b = PTHREAD_RWLOCK_INITIALIZER;
static int write_second;

static void take(pthread_rwlock_t *first, pthread_rwlock_t *second)
{
	pthread_rwlock_rdlock(first);
	if (write_second)
		pthread_rwlock_wrlock(second);
	else
		pthread_rwlock_rdlock(second);
	pthread_rwlock_unlock(second);
	pthread_rwlock_unlock(first);
}

static void *ab(void *arg)
{
	(void)arg;
	say_thread("ab");
	take(&a, &b);
	return NULL;
}

static void *ba(void *arg)
{
	(void)arg;
	say_thread("ba");
	take(&b, &a);
	return NULL;
}

int main(int argc, char **argv)
{
	pthread_t thread;

	write_second = argc > 1 && strcmp(argv[1], "write-read") == 0;
	say_mutex("A", &a);
	say_mutex("B", &b);
	pthread_create(&thread, NULL, ab, NULL);
	pthread_join(thread, NULL);
	pthread_create(&thread, NULL, ba, NULL);
	pthread_join(thread, NULL);
	return 0;
}
