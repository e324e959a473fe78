/* Every thread waits, and nothing will wake any of them; argv[1]:
 *   "condvar":  two workers wait on a condition variable nobody signals; main
 *               joins the first. No lock is held: no lock cycle either.
 *   "lock":     worker "a" takes L, then waits on the condition variable;
 *               worker "b" blocks on L (held by "a"); main joins "a".
 *   "busy":     like "condvar", but a third worker keeps running: no hang.
 * Prints "mutex L 0x...", "mutex C 0x..." (the condition variable) and
 * "thread NAME TID" for main, a, b (and busy). */
#include "facts.h"
#include <string.h>

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t guard = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t never = PTHREAD_COND_INITIALIZER;
static pthread_barrier_t started;
static volatile int signalled;

static void wait_forever(pthread_mutex_t *held)
{
	pthread_mutex_lock(&guard);
	while (!signalled)
		pthread_cond_wait(&never, &guard);
	pthread_mutex_unlock(&guard);
	if (held)
		pthread_mutex_unlock(held);
}

static void *worker_a(void *arg)
{
	int take_lock = arg != NULL;

	say_thread("a");
	if (take_lock)
		pthread_mutex_lock(&lock);
	pthread_barrier_wait(&started);
	wait_forever(take_lock ? &lock : NULL);
	return NULL;
}

static void *worker_b(void *arg)
{
	int take_lock = arg != NULL;

	say_thread("b");
	pthread_barrier_wait(&started);
	if (take_lock) {
		pthread_mutex_lock(&lock); /* "a" holds it, forever */
		pthread_mutex_unlock(&lock);
	} else {
		wait_forever(NULL);
	}
	return NULL;
}

static void *busy(void *arg)
{
	(void)arg;
	say_thread("busy");
	for (;;)
		__asm__ volatile("" ::: "memory");
	return NULL;
}

int main(int argc, char **argv)
{
	const char *mode = argc > 1 ? argv[1] : "condvar";
	void *take_lock = strcmp(mode, "lock") == 0 ? (void *)1 : NULL;
	pthread_t a, b, spinner;

	say_mutex("L", &lock);
	say_mutex("C", &never);
	say_thread("main");
	pthread_barrier_init(&started, NULL, 3);
	pthread_create(&a, NULL, worker_a, take_lock);
	pthread_create(&b, NULL, worker_b, take_lock);
	if (strcmp(mode, "busy") == 0)
		pthread_create(&spinner, NULL, busy, NULL);
	pthread_barrier_wait(&started);
	pthread_join(a, NULL);
	return 0;
}
