// Two threads take two absl::Mutex in opposite orders, one after the other
// (a Notification keeps them apart): a lock-order inversion. absl::Mutex sleeps
// on futexes of its own; no pthread mutex is taken for these locks. The second
// thread takes its first mutex as a reader (ReaderLock).
// Prints "mutex A 0x... B 0x..." and "thread ab TID" / "thread ba TID".
#include <unistd.h>

#include <cstdio>
#include <thread>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"

static absl::Mutex mutex_a, mutex_b;
static absl::Notification first_done;

int main()
{
	setvbuf(stdout, nullptr, _IOLBF, 0);
	std::printf("mutex A %p B %p\n", static_cast<void *>(&mutex_a),
		    static_cast<void *>(&mutex_b));
	std::thread ab([] {
		std::printf("thread ab %d\n", gettid());
		mutex_a.Lock();
		mutex_b.Lock();
		mutex_b.Unlock();
		mutex_a.Unlock();
		first_done.Notify();
	});
	std::thread ba([] {
		first_done.WaitForNotification();
		std::printf("thread ba %d\n", gettid());
		mutex_b.ReaderLock();
		mutex_a.Lock();
		mutex_a.Unlock();
		mutex_b.ReaderUnlock();
	});
	ab.join();
	ba.join();
	return 0;
}
