/* Processes are separate: the parent takes A then B, its forked child
 * (same addresses, copied memory) takes B then A. Two processes, no cycle. */
#include "facts.h"
#include <pthread.h>
#include <sys/wait.h>

static pthread_mutex_t a = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t b = PTHREAD_MUTEX_INITIALIZER;

static void take(pthread_mutex_t *first, pthread_mutex_t *second)
{
	pthread_mutex_lock(first);
	pthread_mutex_lock(second);
	pthread_mutex_unlock(second);
	pthread_mutex_unlock(first);
}

int main(void)
{
	pid_t child;

	say_mutex("A", &a);
	say_mutex("B", &b);
	take(&a, &b);
	child = fork();
	if (child == 0) {
		printf("pid child %d\n", getpid());
		take(&b, &a);
		return 0;
	}
	printf("pid parent %d\n", getpid());
	waitpid(child, NULL, 0);
	return 0;
}
