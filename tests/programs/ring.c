/* N threads (argv[1], default 3) in a ring: thread i holds lock i and then
 * takes lock i+1 (mod N). They run one after another, so nothing hangs, but
 * the N edges form one cycle that N distinct threads close. */
#include "facts.h"
#include <pthread.h>
#include <stdlib.h>

#define MAX_LOCKS 128

static pthread_mutex_t locks[MAX_LOCKS];
static int count = 3;

static void *take_pair(void *arg)
{
	long i = (long)arg;
	char name[16];

	snprintf(name, sizeof(name), "t%ld", i);
	say_thread(name);
	pthread_mutex_lock(&locks[i]);
	pthread_mutex_lock(&locks[(i + 1) % count]);
	pthread_mutex_unlock(&locks[(i + 1) % count]);
	pthread_mutex_unlock(&locks[i]);
	return NULL;
}

int main(int argc, char **argv)
{
	if (argc > 1)
		count = atoi(argv[1]);
	if (count < 2 || count > MAX_LOCKS)
		return 2;
	for (int i = 0; i < count; i++) {
		char name[16];

		pthread_mutex_init(&locks[i], NULL);
		snprintf(name, sizeof(name), "L%d", i);
		say_mutex(name, &locks[i]);
	}
	for (long i = 0; i < count; i++) {
		pthread_t thread;

		pthread_create(&thread, NULL, take_pair, (void *)i);
		pthread_join(thread, NULL);
	}
	return 0;
}
