/* Churn: T threads (argv[2], default 4) each take N mutexes (argv[1], default
 * 16384) in overlapping pairs, L[i] then L[i+1], as fast as they can, for R
 * rounds (argv[3], default 3): (N-1) x T distinct edges in one burst, on no
 * cycle. Then two threads take X then Y and Y then X, one after the other:
 * the one inversion, which must not be lost in the churn. */
#include "facts.h"
#include <stdlib.h>

static pthread_mutex_t *locks;
static pthread_mutex_t x = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t y = PTHREAD_MUTEX_INITIALIZER;
static int count = 16384, rounds = 3;

static void *take_pairs(void *arg)
{
	(void)arg;
	for (int round = 0; round < rounds; round++) {
		for (int i = 0; i + 1 < count; i++) {
			pthread_mutex_lock(&locks[i]);
			pthread_mutex_lock(&locks[i + 1]);
			pthread_mutex_unlock(&locks[i + 1]);
			pthread_mutex_unlock(&locks[i]);
		}
	}
	return NULL;
}

static void take(pthread_mutex_t *first, pthread_mutex_t *second)
{
	pthread_mutex_lock(first);
	pthread_mutex_lock(second);
	pthread_mutex_unlock(second);
	pthread_mutex_unlock(first);
}

static void *x_then_y(void *arg)
{
	(void)arg;
	say_thread("xy");
	take(&x, &y);
	return NULL;
}

static void *y_then_x(void *arg)
{
	(void)arg;
	say_thread("yx");
	take(&y, &x);
	return NULL;
}

int main(int argc, char **argv)
{
	int threads = 4;
	pthread_t *workers;

	if (argc > 1)
		count = atoi(argv[1]);
	if (argc > 2)
		threads = atoi(argv[2]);
	if (argc > 3)
		rounds = atoi(argv[3]);
	if (count < 2 || threads < 1 || rounds < 1)
		return 2;
	locks = calloc(count, sizeof(*locks));
	workers = calloc(threads, sizeof(*workers));
	for (int i = 0; i < count; i++)
		pthread_mutex_init(&locks[i], NULL);
	say_mutex("X", &x);
	say_mutex("Y", &y);
	for (int i = 0; i < threads; i++)
		pthread_create(&workers[i], NULL, take_pairs, NULL);
	for (int i = 0; i < threads; i++)
		pthread_join(workers[i], NULL);
	run_in_thread(x_then_y);
	run_in_thread(y_then_x);
	return 0;
}
