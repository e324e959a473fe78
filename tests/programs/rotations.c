/* ThreadSanitizer's deadlock stress test 19, "lots of lock inversions": one
 * thread takes N locks (argv[1], default 45) while holding all it took, each
 * round starting one lock further along, then releases them. Every ordered
 * pair of locks is taken both ways: N(N-1)/2 single-thread inversions. */
#include "facts.h"
#include <pthread.h>
#include <stdlib.h>

#define MAX_LOCKS 60

static pthread_mutex_t locks[MAX_LOCKS];

int main(int argc, char **argv)
{
	int count = argc > 1 ? atoi(argv[1]) : 45;

	if (count < 2 || count > MAX_LOCKS)
		return 2;
	for (int i = 0; i < count; i++)
		pthread_mutex_init(&locks[i], NULL);
	say_thread("main");
	for (int first = 0; first < count; first++) {
		for (int j = 0; j < count; j++)
			pthread_mutex_lock(&locks[(first + j) % count]);
		for (int j = 0; j < count; j++)
			pthread_mutex_unlock(&locks[(first + j) % count]);
	}
	return 0;
}
