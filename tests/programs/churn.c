/* A long-running workload for watch tests: every 100 ms, a fresh pair of
 * threads takes A then B and B then A (one after the other, never hanging),
 * until killed. Prints "mutex A ... B ..." once. */
#include "facts.h"
#include <pthread.h>

static pthread_mutex_t a = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t b = PTHREAD_MUTEX_INITIALIZER;

static void *take(void *arg)
{
	int reverse = arg != NULL;

	pthread_mutex_lock(reverse ? &b : &a);
	pthread_mutex_lock(reverse ? &a : &b);
	pthread_mutex_unlock(reverse ? &a : &b);
	pthread_mutex_unlock(reverse ? &b : &a);
	return NULL;
}

int main(void)
{
	say_mutex("A", &a);
	say_mutex("B", &b);
	for (;;) {
		pthread_t thread;

		pthread_create(&thread, NULL, take, NULL);
		pthread_join(thread, NULL);
		pthread_create(&thread, NULL, take, (void *)1);
		pthread_join(thread, NULL);
		usleep(100000);
	}
	return 0;
}
