// Probes, as the kubelet runs them: HTTP GET and TCP from the node, exec inside the pod (gRPC
// probes are reported as unsupported and count as success). Startup gates the others and the container's
// "started"; readiness drives "ready"; a failed liveness or startup probe restarts the container.
package nodeagent

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

func probeTiming(p *v1.Probe) (delay, period, timeout time.Duration, failures, successes int32) {
	delay = time.Duration(p.InitialDelaySeconds) * time.Second
	period, timeout, failures, successes = 10*time.Second, time.Second, 3, 1
	if p.PeriodSeconds > 0 {
		period = time.Duration(p.PeriodSeconds) * time.Second
	}
	if p.TimeoutSeconds > 0 {
		timeout = time.Duration(p.TimeoutSeconds) * time.Second
	}
	if p.FailureThreshold > 0 {
		failures = p.FailureThreshold
	}
	if p.SuccessThreshold > 0 {
		successes = p.SuccessThreshold
	}
	return
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

func (c *container) requestKill(why string) {
	select {
	case c.killCh <- why:
	default:
	}
}

// runProbes runs while one process of the container runs.
func (c *container) runProbes(ctx context.Context) {
	if p := c.spec.StartupProbe; p != nil {
		delay, period, _, failures, _ := probeTiming(p)
		if !sleepCtx(ctx, delay) {
			return
		}
		for fails := int32(0); ; {
			err := c.probeOnce(ctx, p)
			if ctx.Err() != nil {
				return
			}
			if err == nil {
				break
			}
			fails++
			c.w.event(v1.EventTypeWarning, "Unhealthy", "Startup probe of %s failed: %v", c.spec.Name, err)
			if fails >= failures {
				c.requestKill(fmt.Sprintf("startup probe failed %d times: %v", fails, err))
				return
			}
			if !sleepCtx(ctx, period) {
				return
			}
		}
	}
	c.markStarted()
	if p := c.spec.ReadinessProbe; p != nil {
		go c.readinessLoop(ctx, p)
	} else {
		c.setState(func() { c.ready = true })
	}
	if p := c.spec.LivenessProbe; p != nil {
		go c.livenessLoop(ctx, p)
	}
}

func (c *container) readinessLoop(ctx context.Context, p *v1.Probe) {
	delay, period, _, failures, successes := probeTiming(p)
	if !sleepCtx(ctx, delay) {
		return
	}
	var ok, bad int32
	for {
		err := c.probeOnce(ctx, p)
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			ok, bad = ok+1, 0
			if ok >= successes {
				c.setReady(true)
			}
		} else {
			ok, bad = 0, bad+1
			if bad >= failures {
				if c.setReady(false) {
					c.w.event(v1.EventTypeWarning, "Unhealthy", "Readiness probe of %s failed: %v", c.spec.Name, err)
				}
			}
		}
		if !sleepCtx(ctx, period) {
			return
		}
	}
}

// setReady reports whether it changed anything.
func (c *container) setReady(r bool) bool {
	c.w.mu.Lock()
	changed := c.ready != r
	c.ready = r
	c.w.mu.Unlock()
	if changed {
		c.w.markDirty()
	}
	return changed
}

func (c *container) livenessLoop(ctx context.Context, p *v1.Probe) {
	delay, period, _, failures, _ := probeTiming(p)
	if !sleepCtx(ctx, delay) {
		return
	}
	var bad int32
	for {
		err := c.probeOnce(ctx, p)
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			bad = 0
		} else {
			bad++
			c.w.event(v1.EventTypeWarning, "Unhealthy", "Liveness probe of %s failed: %v", c.spec.Name, err)
			if bad >= failures {
				c.requestKill(fmt.Sprintf("liveness probe failed %d times: %v", bad, err))
				return
			}
		}
		if !sleepCtx(ctx, period) {
			return
		}
	}
}

// resolvePort: a number, or the name of one of the container's ports.
func resolvePort(port intstr.IntOrString, c *v1.Container) (int, error) {
	if port.Type == intstr.Int {
		return port.IntValue(), nil
	}
	if n, err := strconv.Atoi(port.StrVal); err == nil {
		return n, nil
	}
	for _, p := range c.Ports {
		if p.Name == port.StrVal {
			return int(p.ContainerPort), nil
		}
	}
	return 0, fmt.Errorf("container %s has no port named %q", c.Name, port.StrVal)
}

var probeClient = &http.Client{
	Transport: &http.Transport{
		Proxy:             nil, // never a proxy from the environment: probes go to the pod
		DisableKeepAlives: true,
		TLSClientConfig:   &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // as the kubelet's HTTPS probes
	},
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
}

func (c *container) probeOnce(ctx context.Context, p *v1.Probe) error {
	_, _, timeout, _, _ := probeTiming(p)
	c.w.mu.Lock()
	host := c.w.ip.String()
	c.w.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	switch {
	case p.HTTPGet != nil:
		g := p.HTTPGet
		port, err := resolvePort(g.Port, &c.spec)
		if err != nil {
			return err
		}
		if g.Host != "" {
			host = g.Host
		}
		scheme := "http"
		if g.Scheme == v1.URISchemeHTTPS {
			scheme = "https"
		}
		path := g.Path
		if !strings.HasPrefix(path, "/") {
			path = "/" + path
		}
		url := fmt.Sprintf("%s://%s%s", scheme, net.JoinHostPort(host, strconv.Itoa(port)), path)
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		req.Header.Set("User-Agent", "kube-probe/onemesh-testenv")
		for _, h := range g.HTTPHeaders {
			req.Header.Add(h.Name, h.Value)
		}
		resp, err := probeClient.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode < 200 || resp.StatusCode >= 400 {
			return fmt.Errorf("GET %s: HTTP %d", url, resp.StatusCode)
		}
		return nil
	case p.TCPSocket != nil:
		port, err := resolvePort(p.TCPSocket.Port, &c.spec)
		if err != nil {
			return err
		}
		if p.TCPSocket.Host != "" {
			host = p.TCPSocket.Host
		}
		var d net.Dialer
		conn, err := d.DialContext(ctx, "tcp", net.JoinHostPort(host, strconv.Itoa(port)))
		if err != nil {
			return err
		}
		return conn.Close()
	case p.Exec != nil:
		return c.execProbe(ctx, p.Exec.Command)
	default:
		c.w.logf("container %s: gRPC probes are not supported by the test node agent; counted as success", c.spec.Name)
		return nil
	}
}

// execProbe runs the command as the container runs (same namespace, mounts, user, env), in a
// process of its own; exit code 0 is success. Its output goes nowhere.
func (c *container) execProbe(ctx context.Context, command []string) error {
	if len(command) == 0 {
		return fmt.Errorf("exec probe without a command")
	}
	c.w.mu.Lock()
	spec := c.execSpec
	c.w.mu.Unlock()
	path := ""
	for _, e := range spec.Env {
		if v, ok := strings.CutPrefix(e, "PATH="); ok {
			path = v
		}
	}
	spec.Argv = append([]string{}, command...)
	if resolved, ok := findProgram(command[0], path); ok {
		spec.Argv[0] = resolved
	}
	f, err := os.CreateTemp(filepath.Join(c.w.dir, "run"), c.spec.Name+".probe-*.json")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if err := json.NewEncoder(f).Encode(spec); err != nil {
		f.Close()
		return err
	}
	f.Close()
	cmd := exec.Command("ip", "netns", "exec", podNetnsName(string(c.w.uid)), c.w.a.cfg.Exe, "container-exec", f.Name())
	cmd.Env = []string{"PATH=" + defaultPath}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("exec %v: %w", command, err)
		}
		return nil
	case <-ctx.Done():
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
		return fmt.Errorf("exec %v: timed out", command)
	}
}
