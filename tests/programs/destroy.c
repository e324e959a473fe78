/* Address reuse. T1 takes A then B. A is destroyed and a new mutex is
 * initialized at the same address (A'). T2 takes B then A': no cycle, A and
 * A' are different locks. T3 then takes A' then B: now B -> A' -> B is a
 * real cycle, on A's second generation. */
#include "facts.h"
#include <pthread.h>

static pthread_mutex_t a;
static pthread_mutex_t b = PTHREAD_MUTEX_INITIALIZER;

struct job {
	const char *name;
	pthread_mutex_t *first, *second;
};

static void *take(void *arg)
{
	struct job *job = arg;

	say_thread(job->name);
	pthread_mutex_lock(job->first);
	pthread_mutex_lock(job->second);
	pthread_mutex_unlock(job->second);
	pthread_mutex_unlock(job->first);
	return NULL;
}

static void run(const char *name, pthread_mutex_t *first,
		pthread_mutex_t *second)
{
	struct job job = { name, first, second };
	pthread_t thread;

	pthread_create(&thread, NULL, take, &job);
	pthread_join(thread, NULL);
}

int main(void)
{
	pthread_mutex_init(&a, NULL);
	say_mutex("A", &a);
	say_mutex("B", &b);
	run("t1", &a, &b);
	pthread_mutex_destroy(&a);
	pthread_mutex_init(&a, NULL);
	run("t2", &b, &a);
	run("t3", &a, &b);
	return 0;
}
