/* Threads that really deadlock: a barrier makes sure every thread holds its
 * first lock before any asks for its second. argv[1]:
 *   "abba":       two threads, A then B and B then A
 *   "ring":       three threads, L0 -> L1, L1 -> L2, L2 -> L0; "ring N": N
 *                 threads (dining philosophers, each takes its left fork,
 *                 then its right one)
 *   "rwlock":     two threads read-lock A and B, then each write-locks the
 *                 other: each writer waits for the other thread's reader
 *   "rwlock-writers": two threads write-lock A and B, then each write-locks
 *                 the other: each writer waits for the other writer
 * argv[2] "errorcheck": the mutexes are error-checking ones (musl records the
 * owner of those only); "pi": priority-inheritance ones (the kernel knows
 * their owner: FUTEX_LOCK_PI).
 * Prints its mount namespace ("mntns N") so tests can check the report. */
#include "facts.h"
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define MAX_THREADS 64

static pthread_mutex_t mutexes[MAX_THREADS];
static pthread_rwlock_t rwlocks[2];
static pthread_barrier_t all_hold_first;
static int threads = 2, use_rwlocks, writers_first;
static pthread_mutexattr_t mutex_type;

static void *take_two(void *arg)
{
	long i = (long)arg;
	long next = (i + 1) % threads;
	char name[16];

	snprintf(name, sizeof(name), "t%ld", i);
	say_thread(name);
	if (use_rwlocks) {
		if (writers_first)
			pthread_rwlock_wrlock(&rwlocks[i]);
		else
			pthread_rwlock_rdlock(&rwlocks[i]);
		pthread_barrier_wait(&all_hold_first);
		pthread_rwlock_wrlock(&rwlocks[next]);
	} else {
		pthread_mutex_lock(&mutexes[i]);
		pthread_barrier_wait(&all_hold_first);
		pthread_mutex_lock(&mutexes[next]);
	}
	return NULL;
}

static void say_mntns(void)
{
	char link[64] = "";
	ssize_t n = readlink("/proc/self/ns/mnt", link, sizeof(link) - 1);

	if (n > 0)
		printf("mntns %s\n",
		       strchr(link, '[') ? strtok(strchr(link, '[') + 1, "]") :
					   "0");
}

int main(int argc, char **argv)
{
	pthread_t thread[MAX_THREADS];
	const char *mode = argc > 1 ? argv[1] : "abba";

	threads = strcmp(mode, "ring") == 0 ? 3 : 2;
	if (strcmp(mode, "ring") == 0 && argc > 2)
		threads = atoi(argv[2]);
	if (threads < 2 || threads > MAX_THREADS)
		return 2;
	writers_first = strcmp(mode, "rwlock-writers") == 0;
	use_rwlocks = strcmp(mode, "rwlock") == 0 || writers_first;
	pthread_mutexattr_init(&mutex_type);
	if (argc > 2 && strcmp(argv[2], "errorcheck") == 0)
		pthread_mutexattr_settype(&mutex_type,
					  PTHREAD_MUTEX_ERRORCHECK);
	if (argc > 2 && strcmp(argv[2], "pi") == 0)
		pthread_mutexattr_setprotocol(&mutex_type,
					      PTHREAD_PRIO_INHERIT);
	say_mntns();
	for (int i = 0; i < threads; i++) {
		char name[16];

		snprintf(name, sizeof(name), "L%d", i);
		if (use_rwlocks) {
			pthread_rwlock_init(&rwlocks[i], NULL);
			say_mutex(name, &rwlocks[i]);
		} else {
			pthread_mutex_init(&mutexes[i], &mutex_type);
			say_mutex(name, &mutexes[i]);
		}
	}
	fflush(stdout);
	pthread_barrier_init(&all_hold_first, NULL, threads);
	for (long i = 0; i < threads; i++)
		pthread_create(&thread[i], NULL, take_two, (void *)i);
	for (int i = 0; i < threads; i++)
		pthread_join(thread[i], NULL); /* never returns */
	return 0;
}
