/* Locks taken one at a time, never nested: no lock-order edge at all. */
#include "facts.h"
#include <pthread.h>

static pthread_mutex_t a = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t b = PTHREAD_MUTEX_INITIALIZER;

static void *one_at_a_time(void *arg)
{
	int reverse = arg != NULL;

	for (int i = 0; i < 100; i++) {
		pthread_mutex_lock(reverse ? &b : &a);
		pthread_mutex_unlock(reverse ? &b : &a);
		pthread_mutex_lock(reverse ? &a : &b);
		pthread_mutex_unlock(reverse ? &a : &b);
	}
	return NULL;
}

int main(void)
{
	pthread_t t1, t2;

	say_mutex("A", &a);
	say_mutex("B", &b);
	pthread_create(&t1, NULL, one_at_a_time, NULL);
	pthread_create(&t2, NULL, one_at_a_time, (void *)1);
	pthread_join(t1, NULL);
	pthread_join(t2, NULL);
	return 0;
}
