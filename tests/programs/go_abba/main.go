// Two goroutines take two sync.Mutex in opposite orders, one after the other.
// Go's mutexes park goroutines in Go's scheduler and its runtime's locks sleep
// on futexes of their own: no probe sees them, and the report must say so.
package main

import (
	"fmt"
	"os"
	"sync"
)

func main() {
	var a, b sync.Mutex
	take := func(first, second *sync.Mutex) {
		first.Lock()
		second.Lock()
		second.Unlock()
		first.Unlock()
	}
	done := make(chan struct{})
	go func() { take(&a, &b); close(done) }()
	<-done
	take(&b, &a)
	fmt.Fprintf(os.Stderr, "process go_abba %d\n", os.Getpid())
}
