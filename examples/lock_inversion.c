/* A classic lock-order inversion: transferring money between two accounts
 * locks the source account first, so two opposite transfers take the same
 * two locks in opposite orders. It only hangs when the two transfers overlap
 * just so; here they run one after the other, so the program always finishes,
 * and igdeadlock still reports the potential deadlock.
 *
 * Build: gcc -g -pthread -o lock_inversion lock_inversion.c */
#include <pthread.h>
#include <stdio.h>

struct account {
	pthread_mutex_t lock;
	const char *owner;
	long balance;
};

static struct account alice = { PTHREAD_MUTEX_INITIALIZER, "alice", 100 };
static struct account bob = { PTHREAD_MUTEX_INITIALIZER, "bob", 100 };

static void transfer(struct account *from, struct account *to, long amount)
{
	pthread_mutex_lock(&from->lock);
	pthread_mutex_lock(
		&to->lock); /* the second lock depends on the call's direction */
	from->balance -= amount;
	to->balance += amount;
	pthread_mutex_unlock(&to->lock);
	pthread_mutex_unlock(&from->lock);
}

static void *pay_bob(void *arg)
{
	(void)arg;
	transfer(&alice, &bob, 10);
	return NULL;
}

static void *refund_alice(void *arg)
{
	(void)arg;
	transfer(&bob, &alice, 5);
	return NULL;
}

int main(void)
{
	pthread_t first, second;

	printf("alice's lock at %p, bob's lock at %p\n", (void *)&alice.lock,
	       (void *)&bob.lock);
	pthread_create(&first, NULL, pay_bob, NULL);
	pthread_join(first, NULL);
	pthread_create(&second, NULL, refund_alice, NULL);
	pthread_join(second, NULL);
	printf("alice has %ld, bob has %ld\n", alice.balance, bob.balance);
	return 0;
}
