// std::lock and std::scoped_lock take several mutexes without deadlocking, in
// any order: lock one, try the others, back off and retry. Two threads take the
// same two mutexes in opposite orders, many times, at the same time: no
// deadlock is possible. Prints "mutex A 0x... B 0x...".
#include <cstdio>
#include <mutex>
#include <thread>

static std::mutex a, b;

int main()
{
	std::printf("mutex A %p B %p\n", static_cast<void *>(&a),
		    static_cast<void *>(&b));
	std::fflush(stdout);
	std::thread ab([] {
		for (int i = 0; i < 2000; i++)
			std::scoped_lock both(a, b);
	});
	std::thread ba([] {
		for (int i = 0; i < 2000; i++) {
			std::unique_lock<std::mutex> first(b, std::defer_lock);
			std::unique_lock<std::mutex> second(a, std::defer_lock);
			std::lock(first, second);
		}
	});
	ab.join();
	ba.join();
	return 0;
}
