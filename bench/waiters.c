/* Many threads that wait for good, for the snapshot benchmark: argv[1]
 * threads (default 1000), half blocked on a mutex the main thread holds, half
 * in a condition variable's wait. Prints "ready" once every thread has
 * started (they wait a moment later). */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

static pthread_mutex_t held = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t guard = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t never = PTHREAD_COND_INITIALIZER;
static pthread_barrier_t started;

static void *wait_for_mutex(void *arg)
{
	(void)arg;
	pthread_barrier_wait(&started);
	pthread_mutex_lock(&held);
	return NULL;
}

static void *wait_for_signal(void *arg)
{
	(void)arg;
	pthread_barrier_wait(&started);
	pthread_mutex_lock(&guard);
	for (;;)
		pthread_cond_wait(&never, &guard);
	return NULL;
}

int main(int argc, char **argv)
{
	int threads = argc > 1 ? atoi(argv[1]) : 1000;
	pthread_attr_t small;
	pthread_t thread;

	pthread_attr_init(&small);
	pthread_attr_setstacksize(&small, 64 * 1024);
	pthread_mutex_lock(&held);
	pthread_barrier_init(&started, NULL, threads + 1);
	for (int i = 0; i < threads; i++)
		pthread_create(&thread, &small,
			       i % 2 ? wait_for_signal : wait_for_mutex, NULL);
	pthread_barrier_wait(&started);
	printf("ready\n");
	fflush(stdout);
	pthread_join(thread,
		     NULL); /* never returns: the main thread waits too */
	return 0;
}
