/* A big, consistent lock order and one inversion after it: one thread takes
 * L[i] then L[j] for every i < j of N locks (argv[1]; N(N-1)/2 edges, none on
 * a cycle), then two threads take X then Y and Y then X (a barrier keeps them
 * from hanging). Prints "mutex X 0x... Y 0x..." and "thread xy TID" / "yx". */
#include "facts.h"
#include <pthread.h>
#include <stdlib.h>

static pthread_mutex_t *locks;
static pthread_mutex_t x = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t y = PTHREAD_MUTEX_INITIALIZER;
static pthread_barrier_t first_done;

static void take(pthread_mutex_t *first, pthread_mutex_t *second)
{
	pthread_mutex_lock(first);
	pthread_mutex_lock(second);
	pthread_mutex_unlock(second);
	pthread_mutex_unlock(first);
}

static void *x_then_y(void *arg)
{
	(void)arg;
	say_thread("xy");
	take(&x, &y);
	pthread_barrier_wait(&first_done);
	return NULL;
}

static void *y_then_x(void *arg)
{
	(void)arg;
	pthread_barrier_wait(&first_done);
	say_thread("yx");
	take(&y, &x);
	return NULL;
}

int main(int argc, char **argv)
{
	int count = argc > 1 ? atoi(argv[1]) : 1001;
	pthread_t xy, yx;

	locks = calloc(count, sizeof(*locks));
	for (int i = 0; i < count; i++)
		pthread_mutex_init(&locks[i], NULL);
	for (int i = 0; i < count; i++) {
		pthread_mutex_lock(&locks[i]);
		for (int j = i + 1; j < count; j++) {
			pthread_mutex_lock(&locks[j]);
			pthread_mutex_unlock(&locks[j]);
		}
		pthread_mutex_unlock(&locks[i]);
	}
	say_mutex("X", &x);
	say_mutex("Y", &y);
	pthread_barrier_init(&first_done, NULL, 2);
	pthread_create(&xy, NULL, x_then_y, NULL);
	pthread_create(&yx, NULL, y_then_x, NULL);
	pthread_join(xy, NULL);
	pthread_join(yx, NULL);
	return 0;
}
