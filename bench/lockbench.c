/* Lock-heavy benchmark: THREADS threads each run ITERATIONS rounds of
 * "lock DEPTH mutexes in order, unlock them in reverse".
 *   uncontended: every thread has its own mutexes
 *   contended:   all threads share the same DEPTH mutexes
 * Prints one line: "pairs N wall_ns T ns_per_pair X".
 *
 * usage: lockbench THREADS DEPTH ITERATIONS uncontended|contended */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_THREADS 64
#define MAX_DEPTH 16

static pthread_mutex_t locks[MAX_THREADS][MAX_DEPTH];
static int depth, iterations, contended;
static pthread_barrier_t start;

static void *run(void *arg)
{
	pthread_mutex_t *mine = locks[contended ? 0 : (long)arg];

	pthread_barrier_wait(&start);
	for (int i = 0; i < iterations; i++) {
		for (int d = 0; d < depth; d++)
			pthread_mutex_lock(&mine[d]);
		for (int d = depth - 1; d >= 0; d--)
			pthread_mutex_unlock(&mine[d]);
	}
	return NULL;
}

static long long now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int main(int argc, char **argv)
{
	pthread_t threads[MAX_THREADS];
	int count;
	long long begin, end, pairs;

	if (argc != 5) {
		fprintf(stderr,
			"usage: %s THREADS DEPTH ITERATIONS uncontended|contended\n",
			argv[0]);
		return 2;
	}
	count = atoi(argv[1]);
	depth = atoi(argv[2]);
	iterations = atoi(argv[3]);
	contended = strcmp(argv[4], "contended") == 0;
	if (count < 1 || count > MAX_THREADS || depth < 1 ||
	    depth > MAX_DEPTH || iterations < 1)
		return 2;
	for (int t = 0; t < MAX_THREADS; t++)
		for (int d = 0; d < MAX_DEPTH; d++)
			pthread_mutex_init(&locks[t][d], NULL);
	pthread_barrier_init(&start, NULL, count + 1);
	for (long t = 0; t < count; t++)
		pthread_create(&threads[t], NULL, run, (void *)t);
	begin = now_ns();
	pthread_barrier_wait(&start);
	for (int t = 0; t < count; t++)
		pthread_join(threads[t], NULL);
	end = now_ns();
	pairs = (long long)count * depth * iterations;
	printf("pairs %lld wall_ns %lld ns_per_pair %.1f\n", pairs, end - begin,
	       (double)(end - begin) / pairs);
	return 0;
}
