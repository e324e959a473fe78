/* One thread holds L0 and takes COUNT other mutexes in turn: COUNT distinct
 * lock-order edges in a burst, more than the gadget's edge map holds between
 * two fetches. Prints "edges COUNT". */
#include "facts.h"
#include <pthread.h>
#include <stdlib.h>

int main(int argc, char **argv)
{
	int count = argc > 1 ? atoi(argv[1]) : 10000;
	pthread_mutex_t *locks = calloc(count + 1, sizeof(*locks));

	for (int i = 0; i <= count; i++)
		pthread_mutex_init(&locks[i], NULL);
	pthread_mutex_lock(&locks[0]);
	for (int i = 1; i <= count; i++) {
		pthread_mutex_lock(&locks[i]);
		pthread_mutex_unlock(&locks[i]);
	}
	pthread_mutex_unlock(&locks[0]);
	printf("edges %d\n", count);
	return 0;
}
