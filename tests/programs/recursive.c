/* A recursive mutex R. T1 locks R twice, unlocks once (R is still held) and
 * takes B: edge R -> B. It then releases R fully and takes C: no edge R -> C.
 * T2 takes B then R (B -> R): a cycle with T1. T3 takes C then R (C -> R):
 * no cycle, because T1 did not hold R when it took C. */
#include "facts.h"
#include <pthread.h>

static pthread_mutex_t r;
static pthread_mutex_t b = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t c = PTHREAD_MUTEX_INITIALIZER;

static void *t1(void *arg)
{
	(void)arg;
	say_thread("t1");
	pthread_mutex_lock(&r);
	pthread_mutex_lock(&r);
	pthread_mutex_unlock(&r);
	pthread_mutex_lock(&b);
	pthread_mutex_unlock(&b);
	pthread_mutex_unlock(&r);
	pthread_mutex_lock(&c);
	pthread_mutex_unlock(&c);
	return NULL;
}

static void *then_r(void *arg)
{
	pthread_mutex_t *first = arg;

	say_thread(first == &b ? "t2" : "t3");
	pthread_mutex_lock(first);
	pthread_mutex_lock(&r);
	pthread_mutex_unlock(&r);
	pthread_mutex_unlock(first);
	return NULL;
}

int main(void)
{
	pthread_mutexattr_t attr;
	pthread_t thread;

	pthread_mutexattr_init(&attr);
	pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_RECURSIVE);
	pthread_mutex_init(&r, &attr);
	say_mutex("R", &r);
	say_mutex("B", &b);
	say_mutex("C", &c);
	pthread_create(&thread, NULL, t1, NULL);
	pthread_join(thread, NULL);
	pthread_create(&thread, NULL, then_r, &b);
	pthread_join(thread, NULL);
	pthread_create(&thread, NULL, then_r, &c);
	pthread_join(thread, NULL);
	return 0;
}
