/* Waits that end: no deadlock to report.
 * 1. T1 holds A and sleeps for two seconds; T2 waits for A all that time.
 * 2. T3 holds B and waits for C with a two-second timeout; T4 holds C and
 *    waits for B. A wait-for cycle, but the timed wait gives up and the
 *    cycle dissolves.
 * argv[1] "forever": until killed, four threads take A then B (always in
 * that order: no deadlock) with a moment in between, while the pair of 2.
 * runs again and again with a 20 ms deadline: waits that end, all the time. */
#include "facts.h"
#include <pthread.h>
#include <string.h>
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

static void *ordered_loop(void *arg)
{
	(void)arg;
	for (;;) {
		pthread_mutex_lock(&a);
		pthread_mutex_lock(&b);
		usleep(50);
		pthread_mutex_unlock(&b);
		pthread_mutex_unlock(&a);
	}
	return NULL;
}

static void *timed_loop(void *arg)
{
	struct timespec deadline;

	(void)arg;
	for (;;) {
		pthread_mutex_lock(&b);
		clock_gettime(CLOCK_REALTIME, &deadline);
		deadline.tv_nsec += 20 * 1000 * 1000;
		if (deadline.tv_nsec >= 1000 * 1000 * 1000) {
			deadline.tv_sec++;
			deadline.tv_nsec -= 1000 * 1000 * 1000;
		}
		if (pthread_mutex_timedlock(&c, &deadline) == 0)
			pthread_mutex_unlock(&c);
		pthread_mutex_unlock(&b);
		usleep(100);
	}
	return NULL;
}

static void *blocked_loop(void *arg)
{
	(void)arg;
	for (;;) {
		pthread_mutex_lock(&c);
		pthread_mutex_lock(&b);
		pthread_mutex_unlock(&b);
		pthread_mutex_unlock(&c);
		usleep(100);
	}
	return NULL;
}

static void forever(void)
{
	pthread_t thread;

	for (int i = 0; i < 4; i++)
		pthread_create(&thread, NULL, ordered_loop, NULL);
	pthread_create(&thread, NULL, timed_loop, NULL);
	pthread_create(&thread, NULL, blocked_loop, NULL);
	pthread_join(thread, NULL); /* never returns */
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

int main(int argc, char **argv)
{
	say_mutex("A", &a);
	say_mutex("B", &b);
	say_mutex("C", &c);
	if (argc > 1 && strcmp(argv[1], "forever") == 0)
		forever();
	pair(sleepy_owner, patient_waiter);
	pair(timed_waiter, blocked_waiter);
	printf("done\n");
	return 0;
}
