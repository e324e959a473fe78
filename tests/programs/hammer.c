/* Four threads hammer their own pair of nested locks, concurrently: many
 * acquisitions, four edges, no cycle. */
#include "facts.h"
#include <pthread.h>

#define THREADS 4
#define ROUNDS 20000

static pthread_mutex_t outer[THREADS], inner[THREADS];

static void *hammer(void *arg)
{
	long i = (long)arg;

	for (int round = 0; round < ROUNDS; round++) {
		pthread_mutex_lock(&outer[i]);
		pthread_mutex_lock(&inner[i]);
		pthread_mutex_unlock(&inner[i]);
		pthread_mutex_unlock(&outer[i]);
	}
	return NULL;
}

int main(void)
{
	pthread_t threads[THREADS];

	for (long i = 0; i < THREADS; i++) {
		pthread_mutex_init(&outer[i], NULL);
		pthread_mutex_init(&inner[i], NULL);
	}
	for (long i = 0; i < THREADS; i++)
		pthread_create(&threads[i], NULL, hammer, (void *)i);
	for (long i = 0; i < THREADS; i++)
		pthread_join(threads[i], NULL);
	printf("rounds %d\n", THREADS * ROUNDS);
	return 0;
}
