/* Timed locks. T1 holds A and waits for B with a timeout; T2 takes B then
 * A: a cycle, but the timed wait gives up on its own (suppressed as
 * "timed-lock"). A timedlock that times out must leave nothing held: T3
 * times out on C (held by main), then takes D, while T4 takes D then C. */
#include "facts.h"
#include <errno.h>
#include <pthread.h>
#include <time.h>

static pthread_mutex_t a = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t b = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t c = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t d = PTHREAD_MUTEX_INITIALIZER;

static struct timespec soon(long ms)
{
	struct timespec deadline;

	clock_gettime(CLOCK_REALTIME, &deadline);
	deadline.tv_nsec += ms * 1000000L;
	deadline.tv_sec += deadline.tv_nsec / 1000000000L;
	deadline.tv_nsec %= 1000000000L;
	return deadline;
}

static void *t1(void *arg)
{
	struct timespec deadline = soon(1000);

	(void)arg;
	say_thread("t1");
	pthread_mutex_lock(&a);
	if (pthread_mutex_timedlock(&b, &deadline) == 0)
		pthread_mutex_unlock(&b);
	pthread_mutex_unlock(&a);
	return NULL;
}

static void *t2(void *arg)
{
	(void)arg;
	say_thread("t2");
	pthread_mutex_lock(&b);
	pthread_mutex_lock(&a);
	pthread_mutex_unlock(&a);
	pthread_mutex_unlock(&b);
	return NULL;
}

static void *t3_times_out(void *arg)
{
	struct timespec deadline = soon(20);

	(void)arg;
	say_thread("t3");
	if (pthread_mutex_timedlock(&c, &deadline) != ETIMEDOUT)
		printf("timedlock did not time out\n");
	pthread_mutex_lock(&d);
	pthread_mutex_unlock(&d);
	return NULL;
}

static void *t4(void *arg)
{
	(void)arg;
	say_thread("t4");
	pthread_mutex_lock(&d);
	pthread_mutex_lock(&c);
	pthread_mutex_unlock(&c);
	pthread_mutex_unlock(&d);
	return NULL;
}

int main(void)
{
	say_mutex("A", &a);
	say_mutex("B", &b);
	say_mutex("C", &c);
	say_mutex("D", &d);
	run_in_thread(t1);
	run_in_thread(t2);
	pthread_mutex_lock(&c);
	run_in_thread(t3_times_out);
	pthread_mutex_unlock(&c);
	run_in_thread(t4);
	return 0;
}
