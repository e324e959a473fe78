/* Two threads take two spinlocks in opposite orders, one after the other
 * (a barrier keeps them from actually deadlocking): a lock-order inversion.
 * Prints "mutex A 0x... B 0x..." and "thread ab TID" / "thread ba TID". */
#include "facts.h"
#include <pthread.h>

static pthread_spinlock_t a, b;
static pthread_barrier_t first_done;

static void take(pthread_spinlock_t *first, pthread_spinlock_t *second)
{
	pthread_spin_lock(first);
	pthread_spin_lock(second);
	pthread_spin_unlock(second);
	pthread_spin_unlock(first);
}

static void *lock_a_then_b(void *arg)
{
	(void)arg;
	say_thread("ab");
	take(&a, &b);
	pthread_barrier_wait(&first_done);
	return NULL;
}

static void *lock_b_then_a(void *arg)
{
	(void)arg;
	pthread_barrier_wait(&first_done);
	say_thread("ba");
	take(&b, &a);
	return NULL;
}

int main(void)
{
	pthread_t ab, ba;

	pthread_spin_init(&a, PTHREAD_PROCESS_PRIVATE);
	pthread_spin_init(&b, PTHREAD_PROCESS_PRIVATE);
	say_mutex("A", (const void *)&a);
	say_mutex("B", (const void *)&b);
	pthread_barrier_init(&first_done, NULL, 2);
	pthread_create(&ab, NULL, lock_a_then_b, NULL);
	pthread_create(&ba, NULL, lock_b_then_a, NULL);
	pthread_join(ab, NULL);
	pthread_join(ba, NULL);
	return 0;
}
