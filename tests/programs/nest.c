/* One thread holds N mutexes at once (argv[1], default 64), L0 to L(N-1) in
 * order, then asks for one more, X. Afterwards another thread takes X, then
 * L(N-1): the inversion L(N-1) -> X -> L(N-1) is only seen if the first
 * thread's deepest held lock was tracked. Prints every lock and thread. */
#include "facts.h"
#include <stdlib.h>

static pthread_mutex_t *nested;
static pthread_mutex_t x = PTHREAD_MUTEX_INITIALIZER;
static int depth = 64;

static void *hold_all_then_x(void *arg)
{
	(void)arg;
	say_thread("deep");
	for (int i = 0; i < depth; i++)
		pthread_mutex_lock(&nested[i]);
	pthread_mutex_lock(&x);
	pthread_mutex_unlock(&x);
	for (int i = depth - 1; i >= 0; i--)
		pthread_mutex_unlock(&nested[i]);
	return NULL;
}

static void *x_then_deepest(void *arg)
{
	(void)arg;
	say_thread("inverted");
	pthread_mutex_lock(&x);
	pthread_mutex_lock(&nested[depth - 1]);
	pthread_mutex_unlock(&nested[depth - 1]);
	pthread_mutex_unlock(&x);
	return NULL;
}

int main(int argc, char **argv)
{
	if (argc > 1)
		depth = atoi(argv[1]);
	if (depth < 1)
		return 2;
	nested = calloc(depth, sizeof(*nested));
	for (int i = 0; i < depth; i++) {
		char name[16];

		pthread_mutex_init(&nested[i], NULL);
		snprintf(name, sizeof(name), "L%d", i);
		say_mutex(name, &nested[i]);
	}
	say_mutex("X", &x);
	run_in_thread(hold_all_then_x);
	run_in_thread(x_then_deepest);
	return 0;
}
