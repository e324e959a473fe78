/* C11 threads: mtx_lock goes through pthread_mutex_lock. AB/BA inversion. */
#include "facts.h"
#include <threads.h>

static mtx_t a, b;

static int ab(void *arg)
{
	(void)arg;
	say_thread("ab");
	mtx_lock(&a);
	mtx_lock(&b);
	mtx_unlock(&b);
	mtx_unlock(&a);
	return 0;
}

static int ba(void *arg)
{
	(void)arg;
	say_thread("ba");
	mtx_lock(&b);
	mtx_lock(&a);
	mtx_unlock(&a);
	mtx_unlock(&b);
	return 0;
}

int main(void)
{
	thrd_t thread;

	mtx_init(&a, mtx_plain);
	mtx_init(&b, mtx_plain);
	say_mutex("A", &a);
	say_mutex("B", &b);
	thrd_create(&thread, ab, NULL);
	thrd_join(thread, NULL);
	thrd_create(&thread, ba, NULL);
	thrd_join(thread, NULL);
	return 0;
}
