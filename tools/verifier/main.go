// verifier-stats loads every program of a BPF object into the running kernel
// with the loader Inspektor Gadget uses (cilium/ebpf, the version ig pins) and
// prints, per program, what the verifier measured: instructions processed
// against its budget, and the combined stack of the deepest call chain
// against the 512-byte limit. The gadget once sat a few bytes under that
// limit and a toolchain change pushed it over; these figures catch the next
// one by a number.
//
//	verifier-stats [-set name=value]... OBJECT.o
//
// -set gives a global constant (a GADGET_PARAM, an IG filter) the value a run
// would load it with: the verifier prunes code its values make dead, so each
// way of running the gadget is a configuration of its own.
//
// Output: one JSON document (see report). Exit status 0 when every program
// loaded, 1 when one did not (its verifier message is in the report), 2 on a
// usage or setup error.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/rlimit"
)

// The verifier's limits (include/linux/bpf.h: MAX_BPF_STACK,
// BPF_COMPLEXITY_LIMIT_INSNS); the budget is read from the log when it says.
const (
	maxStack        = 512
	defaultInsnsMax = 1000000
	// The interpreter's stack granularity: the verifier rounds each frame up
	// to it on kernels before 6.10 (later ones with a JIT use 16 bytes), so
	// 32 gives a figure no kernel exceeds.
	frameRounding = 32
)

type function struct {
	Name  string `json:"name"`
	Stack int    `json:"stack"` // bytes, as the verifier counted them
	// Async: a timer callback, which runs on a stack of its own.
	Async bool `json:"async,omitempty"`
}

type program struct {
	Name             string     `json:"name"`
	Section          string     `json:"section"`
	Loaded           bool       `json:"loaded"`
	Error            string     `json:"error,omitempty"`
	InsnsProcessed   int        `json:"insns_processed"`
	InsnsLimit       int        `json:"insns_limit"`
	VerificationUsec int        `json:"verification_usec"`
	Functions        []function `json:"functions"`
	// The verifier's figure (calls only), with frames rounded as kernels
	// before 6.10 round them (newer ones round less).
	CombinedStack     int      `json:"combined_stack"`
	CombinedStackPath []string `json:"combined_stack_path"`
	// The same with synchronous callbacks counted where they run.
	StackWithCallbacks     int      `json:"stack_with_callbacks"`
	StackWithCallbacksPath []string `json:"stack_with_callbacks_path"`
}

type report struct {
	Object        string            `json:"object"`
	Settings      map[string]string `json:"settings"`
	StackLimit    int               `json:"stack_limit"`
	FrameRounding int               `json:"frame_rounding"`
	Programs      []program         `json:"programs"`
}

type settings map[string]string

var (
	logProgram string
	logLines   int
)

func (s settings) String() string { return fmt.Sprint(map[string]string(s)) }

func (s settings) Set(value string) error {
	name, val, ok := strings.Cut(value, "=")
	if !ok || name == "" {
		return fmt.Errorf("expected name=value, got %q", value)
	}
	s[name] = val
	return nil
}

func main() {
	set := settings{}
	flag.Var(set, "set", "name=value: a global constant's value (repeatable)")
	flag.StringVar(&logProgram, "log", "", "program: print the end of its full verifier log to stderr (for a rejection)")
	flag.IntVar(&logLines, "log-lines", 60, "how many lines of the -log program's log")
	flag.Usage = func() {
		fmt.Fprintf(os.Stderr, "usage: %s [-set name=value]... OBJECT.o\n", os.Args[0])
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() != 1 {
		flag.Usage()
		os.Exit(2)
	}
	rep, err := measure(flag.Arg(0), set)
	if err != nil {
		fmt.Fprintf(os.Stderr, "verifier-stats: %v\n", err)
		os.Exit(2)
	}
	out := json.NewEncoder(os.Stdout)
	out.SetIndent("", "  ")
	if err := out.Encode(rep); err != nil {
		fmt.Fprintf(os.Stderr, "verifier-stats: %v\n", err)
		os.Exit(2)
	}
	for _, p := range rep.Programs {
		if !p.Loaded {
			os.Exit(1)
		}
	}
}

func measure(path string, set settings) (*report, error) {
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("memlock limit: %w", err)
	}
	spec, err := ebpf.LoadCollectionSpec(path)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	for name, value := range set {
		if err := setVariable(spec, name, value); err != nil {
			return nil, err
		}
	}

	// The maps once, for all programs: each program is then loaded on its
	// own, so that one the verifier rejects does not hide the others' figures.
	mapsOnly := spec.Copy()
	mapsOnly.Programs = map[string]*ebpf.ProgramSpec{}
	emptyProgramArrays(mapsOnly)
	maps, err := ebpf.NewCollection(mapsOnly)
	if err != nil {
		return nil, fmt.Errorf("creating the maps: %w", err)
	}
	defer maps.Close()

	rep := &report{Object: path, Settings: set, StackLimit: maxStack, FrameRounding: frameRounding}
	names := make([]string, 0, len(spec.Programs))
	for name := range spec.Programs {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		rep.Programs = append(rep.Programs, loadOne(spec, name, maps))
	}
	return rep, nil
}

// emptyProgramArrays drops the programs a program array is initialised with:
// they are loaded (and measured) on their own, and a tail call changes no
// verifier figure of its caller.
func emptyProgramArrays(spec *ebpf.CollectionSpec) {
	for _, m := range spec.Maps {
		if m.Type == ebpf.ProgramArray {
			m.Contents = nil
		}
	}
}

// setVariable gives a global constant of the object a value, parsed for its size.
func setVariable(spec *ebpf.CollectionSpec, name, value string) error {
	v, ok := spec.Variables[name]
	if !ok {
		return fmt.Errorf("the object has no global variable %q", name)
	}
	if value == "true" || value == "false" {
		return v.Set(value == "true")
	}
	n, err := strconv.ParseUint(value, 0, 64)
	if err != nil {
		return fmt.Errorf("-set %s=%s: not a number or a boolean", name, value)
	}
	switch v.Size() {
	case 1:
		return v.Set(uint8(n))
	case 2:
		return v.Set(uint16(n))
	case 4:
		return v.Set(uint32(n))
	case 8:
		return v.Set(n)
	}
	return fmt.Errorf("-set %s: a %d-byte variable is not a number", name, v.Size())
}

var (
	processedLine = regexp.MustCompile(`processed (\d+) insns \(limit (\d+)\)`)
	stackLine     = regexp.MustCompile(`^stack depth ([0-9+]+)`)
	timeLine      = regexp.MustCompile(`^verification time (\d+) usec`)
)

func loadOne(spec *ebpf.CollectionSpec, name string, maps *ebpf.Collection) program {
	ps := spec.Programs[name]
	p := program{Name: name, Section: ps.SectionName, InsnsLimit: defaultInsnsMax}

	one := spec.Copy()
	one.Programs = map[string]*ebpf.ProgramSpec{name: one.Programs[name]}
	emptyProgramArrays(one)
	opts := ebpf.CollectionOptions{
		MapReplacements: maps.Maps,
		Programs:        ebpf.ProgramOptions{LogLevel: ebpf.LogLevelStats},
	}
	if name == logProgram {
		opts.Programs.LogLevel |= ebpf.LogLevelBranch
	}
	var log []string
	coll, err := ebpf.NewCollectionWithOptions(one, opts)
	if err == nil {
		p.Loaded = true
		log = strings.Split(coll.Programs[name].VerifierLog, "\n")
		coll.Close()
	} else {
		p.Error = err.Error()
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			log = ve.Log
		}
	}

	if name == logProgram {
		start := max(0, len(log)-logLines)
		fmt.Fprintln(os.Stderr, strings.Join(log[start:], "\n"))
	}
	var depths []int
	for _, line := range log {
		if m := processedLine.FindStringSubmatch(line); m != nil {
			p.InsnsProcessed, _ = strconv.Atoi(m[1])
			p.InsnsLimit, _ = strconv.Atoi(m[2])
		}
		if m := stackLine.FindStringSubmatch(line); m != nil {
			for _, d := range strings.Split(m[1], "+") {
				n, _ := strconv.Atoi(d)
				depths = append(depths, n)
			}
		}
		if m := timeLine.FindStringSubmatch(line); m != nil {
			p.VerificationUsec, _ = strconv.Atoi(m[1])
		}
	}

	funcs, calls, callbacks := callGraph(ps.Instructions)
	if depths != nil && len(depths) != len(funcs) {
		p.Error = strings.TrimSpace(p.Error + fmt.Sprintf(
			"; the verifier counted %d functions, the object has %d", len(depths), len(funcs)))
		depths = nil
	}
	for i := range funcs {
		if depths != nil {
			funcs[i].Stack = depths[i]
		}
	}
	p.Functions = funcs
	p.CombinedStack, p.CombinedStackPath = deepestChain(funcs, calls, callbacks, false)
	p.StackWithCallbacks, p.StackWithCallbacksPath = deepestChain(funcs, calls, callbacks, true)
	return p
}

// callGraph lists the functions of a program's linked instruction stream in
// the order the verifier numbers them (by their first instruction), who calls
// whom, and who hands a callback to whom (bpf_loop, bpf_find_vma...). A
// callback given to bpf_timer_set_callback is asynchronous: it runs later, on
// a stack of its own.
func callGraph(insns asm.Instructions) ([]function, map[string][]string, map[string][]string) {
	var funcs []function
	index := map[string]int{}
	calls := map[string][]string{}
	callbacks := map[string][]string{}
	current := ""
	lastCallback := map[asm.Register]string{}
	async := map[string]bool{}
	for _, ins := range insns {
		if sym := ins.Symbol(); sym != "" {
			current = sym
			index[sym] = len(funcs)
			funcs = append(funcs, function{Name: sym})
			lastCallback = map[asm.Register]string{}
		}
		switch {
		case ins.IsFunctionCall():
			calls[current] = append(calls[current], ins.Reference())
		case ins.IsLoadOfFunctionPointer():
			callbacks[current] = append(callbacks[current], ins.Reference())
			lastCallback[ins.Dst] = ins.Reference()
		case ins.IsBuiltinCall() && asm.BuiltinFunc(ins.Constant) == asm.FnTimerSetCallback:
			if cb, ok := lastCallback[asm.R2]; ok {
				async[cb] = true
			}
		}
	}
	for name := range async {
		if i, ok := index[name]; ok {
			funcs[i].Async = true
		}
	}
	return funcs, calls, callbacks
}

func roundFrame(stack int) int {
	if stack < 1 {
		stack = 1
	}
	return (stack + frameRounding - 1) / frameRounding * frameRounding
}

// deepestChain is the verifier's check_max_stack_depth: the largest sum of
// rounded frames along a chain of calls from the program's entry, and from
// each asynchronous callback, which starts a chain of its own. With
// withCallbacks, a synchronous callback counts as a call of the function that
// hands it over: the verifier does not count it, but it runs on that stack.
func deepestChain(funcs []function, calls, callbacks map[string][]string, withCallbacks bool) (int, []string) {
	stack := map[string]int{}
	async := map[string]bool{}
	for _, f := range funcs {
		stack[f.Name] = f.Stack
		async[f.Name] = f.Async
	}
	var walk func(name string, seen map[string]bool) (int, []string)
	walk = func(name string, seen map[string]bool) (int, []string) {
		best, bestPath := 0, []string(nil)
		seen[name] = true
		callees := calls[name]
		if withCallbacks {
			callees = append(append([]string(nil), callees...), callbacks[name]...)
		}
		for _, callee := range callees {
			if async[callee] || seen[callee] {
				continue
			}
			d, path := walk(callee, seen)
			if d > best {
				best, bestPath = d, path
			}
		}
		delete(seen, name)
		return roundFrame(stack[name]) + best, append([]string{name}, bestPath...)
	}
	if len(funcs) == 0 {
		return 0, nil
	}
	best, bestPath := walk(funcs[0].Name, map[string]bool{})
	for _, f := range funcs {
		if f.Async {
			if d, path := walk(f.Name, map[string]bool{}); d > best {
				best, bestPath = d, path
			}
		}
	}
	return best, bestPath
}
