/* Processes and threads coming and going, for the soak (bench/soak.py): every
 * 20 ms a child is forked that starts four threads, each taking two of the
 * child's mutexes in one order (no inversion), and exits; until killed. The
 * gadget's per-process and per-thread state must be cleaned up behind them. */
#include <pthread.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define THREADS 4

static pthread_mutex_t outer = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t inner = PTHREAD_MUTEX_INITIALIZER;

static void *take_in_order(void *arg)
{
	(void)arg;
	pthread_mutex_lock(&outer);
	pthread_mutex_lock(&inner);
	pthread_mutex_unlock(&inner);
	pthread_mutex_unlock(&outer);
	return NULL;
}

static int child(void)
{
	pthread_t threads[THREADS];

	for (int i = 0; i < THREADS; i++)
		pthread_create(&threads[i], NULL, take_in_order, NULL);
	for (int i = 0; i < THREADS; i++)
		pthread_join(threads[i], NULL);
	return 0;
}

int main(void)
{
	const struct timespec pause = { .tv_nsec = 100 * 1000 * 1000 };

	for (;;) {
		pid_t pid = fork();

		if (pid == 0)
			_exit(child());
		if (pid > 0)
			waitpid(pid, NULL, 0);
		nanosleep(&pause, NULL);
	}
}
