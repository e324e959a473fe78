/* Four threads nest three mutexes, always in the same order A -> B -> C:
 * lock-order edges but no cycle, so no finding. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>

static pthread_mutex_t mutex_a = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t mutex_b = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t mutex_c = PTHREAD_MUTEX_INITIALIZER;

static void *nest_in_order(void *arg)
{
	(void)arg;
	for (int i = 0; i < 1000; i++) {
		pthread_mutex_lock(&mutex_a);
		pthread_mutex_lock(&mutex_b);
		pthread_mutex_lock(&mutex_c);
		pthread_mutex_unlock(&mutex_c);
		pthread_mutex_unlock(&mutex_b);
		pthread_mutex_unlock(&mutex_a);
		/* B -> C without A: still consistent */
		pthread_mutex_lock(&mutex_b);
		pthread_mutex_lock(&mutex_c);
		pthread_mutex_unlock(&mutex_c);
		pthread_mutex_unlock(&mutex_b);
	}
	return NULL;
}

int main(void)
{
	pthread_t threads[4];

	printf("mutex A %p B %p C %p\n", (void *)&mutex_a, (void *)&mutex_b,
	       (void *)&mutex_c);
	for (int i = 0; i < 4; i++)
		pthread_create(&threads[i], NULL, nest_in_order, NULL);
	for (int i = 0; i < 4; i++)
		pthread_join(threads[i], NULL);
	return 0;
}
