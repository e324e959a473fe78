/* Two threads take A and B in opposite orders, but always while holding the
 * gate lock G: their critical sections cannot interleave, so no deadlock. */
#include "facts.h"
#include <pthread.h>

static pthread_mutex_t gate = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t a = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t b = PTHREAD_MUTEX_INITIALIZER;

static void take(pthread_mutex_t *first, pthread_mutex_t *second)
{
	pthread_mutex_lock(&gate);
	pthread_mutex_lock(first);
	pthread_mutex_lock(second);
	pthread_mutex_unlock(second);
	pthread_mutex_unlock(first);
	pthread_mutex_unlock(&gate);
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

int main(void)
{
	pthread_t t1, t2;

	say_mutex("G", &gate);
	say_mutex("A", &a);
	say_mutex("B", &b);
	pthread_create(&t1, NULL, ab, NULL);
	pthread_create(&t2, NULL, ba, NULL);
	pthread_join(t1, NULL);
	pthread_join(t2, NULL);
	return 0;
}
