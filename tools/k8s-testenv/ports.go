// Free ports on 127.0.0.1: bound to port 0 and closed again, so another process could take one
// before it is used; good enough for a test cluster started by one person or one CI run.
package main

import (
	"fmt"
	"net"
	"strconv"
)

func runPorts(args []string) error {
	if len(args) != 1 {
		return fmt.Errorf("usage: testenv ports N")
	}
	n, err := strconv.Atoi(args[0])
	if err != nil || n < 1 || n > 64 {
		return fmt.Errorf("N must be a number from 1 to 64, got %q", args[0])
	}
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return fmt.Errorf("no free port on 127.0.0.1: %w", err)
		}
		ls = append(ls, l)
		fmt.Println(l.Addr().(*net.TCPAddr).Port)
	}
	return nil
}
