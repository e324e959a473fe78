/* Waits that end: no deadlock to report.
 * 1. T1 holds A and sleeps for two seconds; T2 waits for A all that time.
 * 2. T3 holds B and waits for C with a two-second timeout; T4 holds C and
 *    waits for B. A wait-for cycle, but the timed wait gives up and the
 *    cycle dissolves. */
#include "facts.h"
#include <pthread.h>
#include <time.h>

static pthread_mutex_t a = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t b = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t c = PTHREAD_MUTEX_INITIALIZER;
static pthread_barrier_t holding;

static void *sleepy_owner(void *arg)
{
	(void)arg;
	pthread_mutex_lock(&a);
	pthread_barrier_wait(&holding);
	sleep(2);
	pthread_mutex_unlock(&a);
	return NULL;
}

static void *patient_waiter(void *arg)
{
	(void)arg;
	pthread_barrier_wait(&holding);
	pthread_mutex_lock(&a);
	pthread_mutex_unlock(&a);
	return NULL;
}

static void *timed_waiter(void *arg)
{
	struct timespec deadline;

	(void)arg;
	pthread_mutex_lock(&b);
	pthread_barrier_wait(&holding);
	clock_gettime(CLOCK_REALTIME, &deadline);
	deadline.tv_sec += 2;
	if (pthread_mutex_timedlock(&c, &deadline) == 0)
		pthread_mutex_unlock(&c);
	pthread_mutex_unlock(&b);
	return NULL;
}

static void *blocked_waiter(void *arg)
{
	(void)arg;
	pthread_mutex_lock(&c);
	pthread_barrier_wait(&holding);
	pthread_mutex_lock(&b);
	pthread_mutex_unlock(&b);
	pthread_mutex_unlock(&c);
	return NULL;
}

static void pair(void *(*first)(void *), void *(*second)(void *))
{
	pthread_t t1, t2;

	pthread_barrier_init(&holding, NULL, 2);
	pthread_create(&t1, NULL, first, NULL);
	pthread_create(&t2, NULL, second, NULL);
	pthread_join(t1, NULL);
	pthread_join(t2, NULL);
	pthread_barrier_destroy(&holding);
}

int main(void)
{
	say_mutex("A", &a);
	say_mutex("B", &b);
	say_mutex("C", &c);
	pair(sleepy_owner, patient_waiter);
	pair(timed_waiter, blocked_waiter);
	printf("done\n");
	return 0;
}
