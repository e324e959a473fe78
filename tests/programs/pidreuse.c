/* PID reuse: a child takes A then B and exits; then the parent makes the
 * kernel hand the same pid to a second child (ns_last_pid), which takes B then
 * A. Same pid, same addresses, different processes: no cycle.
 * Prints "pid first N" and "pid second N" (equal when the pid was reused). */
#include "facts.h"
#include <pthread.h>
#include <stdio.h>
#include <sys/wait.h>

static pthread_mutex_t a = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t b = PTHREAD_MUTEX_INITIALIZER;

static pid_t child(pthread_mutex_t *first, pthread_mutex_t *second)
{
	pid_t pid = fork();

	if (pid == 0) {
		pthread_mutex_lock(first);
		pthread_mutex_lock(second);
		pthread_mutex_unlock(second);
		pthread_mutex_unlock(first);
		_exit(0);
	}
	waitpid(pid, NULL, 0);
	return pid;
}

int main(void)
{
	pid_t first = child(&a, &b), second = 0;

	say_mutex("A", &a);
	say_mutex("B", &b);
	for (int attempt = 0; attempt < 50 && second != first; attempt++) {
		FILE *last = fopen("/proc/sys/kernel/ns_last_pid", "w");

		if (!last)
			break;
		fprintf(last, "%d", first - 1);
		fclose(last);
		second = fork();
		if (second == 0) {
			if (getpid() == first) {
				pthread_mutex_lock(&b);
				pthread_mutex_lock(&a);
				pthread_mutex_unlock(&a);
				pthread_mutex_unlock(&b);
			}
			_exit(0);
		}
		waitpid(second, NULL, 0);
	}
	printf("pid first %d\npid second %d\n", first, second);
	return 0;
}
