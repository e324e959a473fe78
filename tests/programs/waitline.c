/* Says "ready", then takes and releases a mutex once per line read from stdin,
 * answering "locked N", until stdin ends: a process that waits to be inspected
 * and whose pthread_mutex_lock calls can be counted. Builds with glibc and musl,
 * dynamic and static. */
#include <pthread.h>
#include <stdio.h>

static pthread_mutex_t mutex = PTHREAD_MUTEX_INITIALIZER;

int main(void)
{
	char line[256];
	int count = 0;

	setvbuf(stdout, NULL, _IOLBF, 0);
	printf("ready\n");
	while (fgets(line, sizeof line, stdin)) {
		pthread_mutex_lock(&mutex);
		count++;
		pthread_mutex_unlock(&mutex);
		printf("locked %d\n", count);
	}
	return 0;
}
