/* Trylock semantics. argv[1]:
 *   "nocycle": T1 holds A and trylocks B (no edge into B: a trylock cannot
 *              block); T2 takes B then A. Also, a trylock that fails (B busy)
 *              must leave nothing held: T3 fails to trylock B, then takes C,
 *              while T4 takes C then B. No cycle either way.
 *   "cycle":   T1 trylocks A, then takes B (a lock taken by trylock is held
 *              and has outgoing edges); T2 takes B then A: a cycle. */
#include "facts.h"
#include <pthread.h>
#include <string.h>

static pthread_mutex_t a = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t b = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t c = PTHREAD_MUTEX_INITIALIZER;
static int cycle;

static void *t1(void *arg)
{
	(void)arg;
	say_thread("t1");
	if (cycle) {
		if (pthread_mutex_trylock(&a) != 0)
			return NULL;
		pthread_mutex_lock(&b);
	} else {
		pthread_mutex_lock(&a);
		if (pthread_mutex_trylock(&b) != 0)
			return NULL;
	}
	pthread_mutex_unlock(&b);
	pthread_mutex_unlock(&a);
	return NULL;
}

static void *t2(void *arg)
{
	(void)arg;
	say_thread("t2");
	pthread_mutex_lock(&b);
	pthread_mutex_lock(&a);
	pthread_mutex_unlock(&a);
	pthread_mutex_unlock(&b);
	return NULL;
}

static void *t3_failed_trylock(void *arg)
{
	(void)arg;
	say_thread("t3");
	if (pthread_mutex_trylock(&b) == 0) /* main holds B: this fails */
		pthread_mutex_unlock(&b);
	pthread_mutex_lock(&c);
	pthread_mutex_unlock(&c);
	return NULL;
}

static void *t4(void *arg)
{
	(void)arg;
	say_thread("t4");
	pthread_mutex_lock(&c);
	pthread_mutex_lock(&b);
	pthread_mutex_unlock(&b);
	pthread_mutex_unlock(&c);
	return NULL;
}

int main(int argc, char **argv)
{
	cycle = argc > 1 && strcmp(argv[1], "cycle") == 0;
	say_mutex("A", &a);
	say_mutex("B", &b);
	say_mutex("C", &c);
	run_in_thread(t1);
	run_in_thread(t2);
	if (!cycle) {
		pthread_mutex_lock(&b);
		run_in_thread(t3_failed_trylock);
		pthread_mutex_unlock(&b);
		run_in_thread(t4);
	}
	return 0;
}
