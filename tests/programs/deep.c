/* One thread nests 11 mutexes in order, then one of three leaf mutexes in
 * turn, many rounds; afterwards another thread takes leaf X2, then L0.
 * Deeper than the gadget's per-depth dependency cache reaches, with more
 * requests at one depth than it keeps: every edge must still be reported
 * exactly once, and the one inversion (L0 -> X2 -> L0) found.
 * Edges: 55 among L0..L10, 3 x 11 into the leaves, 1 from X2 to L0. */
#include "facts.h"

#define NESTED 11
#define LEAVES 3
#define ROUNDS 3000

static pthread_mutex_t nested[NESTED], leaves[LEAVES];

static void *nest(void *arg)
{
	(void)arg;
	say_thread("deep");
	for (int round = 0; round < ROUNDS; round++) {
		for (int i = 0; i < NESTED; i++)
			pthread_mutex_lock(&nested[i]);
		pthread_mutex_lock(&leaves[round % LEAVES]);
		pthread_mutex_unlock(&leaves[round % LEAVES]);
		for (int i = NESTED - 1; i >= 0; i--)
			pthread_mutex_unlock(&nested[i]);
	}
	return NULL;
}

static void *invert(void *arg)
{
	(void)arg;
	say_thread("inverted");
	pthread_mutex_lock(&leaves[LEAVES - 1]);
	pthread_mutex_lock(&nested[0]);
	pthread_mutex_unlock(&nested[0]);
	pthread_mutex_unlock(&leaves[LEAVES - 1]);
	return NULL;
}

int main(void)
{
	for (int i = 0; i < NESTED; i++)
		pthread_mutex_init(&nested[i], NULL);
	for (int i = 0; i < LEAVES; i++)
		pthread_mutex_init(&leaves[i], NULL);
	say_mutex("L0", &nested[0]);
	say_mutex("X2", &leaves[LEAVES - 1]);
	run_in_thread(nest);
	run_in_thread(invert);
	return 0;
}
