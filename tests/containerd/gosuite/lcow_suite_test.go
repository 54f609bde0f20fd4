// Package gosuite runs containerd's snapshotter conformance suite (snapshots/testsuite) against
// `lcow snapshotter serve`, through containerd's own gRPC proxy client (snapshots/proxy): the
// same client a stock containerd uses for a [proxy_plugins] snapshotter.
//
// Each suite case gets a fresh snapshotter process on its own data root. Built and run by
// tests/containerd/test_snapshotter_testsuite.py (GOPATH mode against Debian's containerd 1.6
// development sources), which sets LCOW_GOSUITE_PYTHON to the Python that runs `-m lcow`.
package gosuite

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/log"
	"github.com/containerd/containerd/snapshots"
	"github.com/containerd/containerd/snapshots/proxy"
	"github.com/containerd/containerd/snapshots/testsuite"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
)

// pythonEnv names the Python interpreter that has lcow installed.
const pythonEnv = "LCOW_GOSUITE_PYTHON"

const (
	startTimeout = 60 * time.Second
	stopTimeout  = 60 * time.Second
)

func TestLcowSnapshotter(t *testing.T) {
	if os.Getenv(pythonEnv) == "" {
		t.Fatalf("%s is not set: the Python that runs `-m lcow`", pythonEnv)
	}
	if os.Geteuid() != 0 {
		t.Fatal("the lcow snapshotter's host backend needs root (loop devices, overlayfs)")
	}
	testsuite.SnapshotterSuite(t, "lcow", newSnapshotter)
}

// lockedBuffer collects the server's stderr (written by the copier, read at close).
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// lcowCommand is `python -m lcow --root root --backend host args...`.
func lcowCommand(root string, args ...string) *exec.Cmd {
	argv := append([]string{"-m", "lcow", "--root", root, "--backend", "host"}, args...)
	return exec.Command(os.Getenv(pythonEnv), argv...)
}

// newSnapshotter is the suite's factory: a snapshotter process serving root, and the proxy
// client over a connection to its socket.
//
// The data root and the socket are in a directory of their own beside the suite's root (a
// symlink root/lcow points at it): on a failure the suite logs every file below its temporary
// directory and reads each whole, and the host backend's FUSE exports of the sandboxes there are
// 20 GiB files. The directory is short, since a unix socket path has at most 107 bytes.
func newSnapshotter(ctx context.Context, root string) (snapshots.Snapshotter, func() error, error) {
	ownDir, err := os.MkdirTemp("", "lcs-")
	if err != nil {
		return nil, nil, err
	}
	sock := filepath.Join(ownDir, "s.sock")
	dataRoot := filepath.Join(ownDir, "root")
	if err := os.Symlink(dataRoot, filepath.Join(root, "lcow")); err != nil {
		os.RemoveAll(ownDir)
		return nil, nil, err
	}
	root = dataRoot
	logs := &lockedBuffer{}
	cmd := lcowCommand(root, "snapshotter", "serve", "--address", sock)
	cmd.Stdout = logs
	cmd.Stderr = logs
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		os.RemoveAll(ownDir)
		return nil, nil, fmt.Errorf("starting the lcow snapshotter: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()

	server := &server{cmd: cmd, exited: exited, logs: logs, root: root, ownDir: ownDir}
	conn, err := server.dial(ctx, sock)
	if err != nil {
		return nil, nil, joinErrors(err, server.stop())
	}
	sn := proxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(conn), "lcow")
	var once sync.Once
	var closeErr error
	closeFn := func() error {
		once.Do(func() {
			closeErr = joinErrors(conn.Close(), server.stop())
			// The server's log in the case's own output (-test.v), a record per line.
			for _, line := range strings.Split(strings.TrimRight(logs.String(), "\n"), "\n") {
				log.G(ctx).Info("lcow snapshotter: " + line)
			}
		})
		return closeErr
	}
	return sn, closeFn, nil
}

// server is one `lcow snapshotter serve` process.
type server struct {
	cmd    *exec.Cmd
	exited chan error
	logs   *lockedBuffer
	root   string
	ownDir string
}

// dial waits for the socket and connects to it (the server accepts once it listens).
func (s *server) dial(ctx context.Context, sock string) (*grpc.ClientConn, error) {
	deadline := time.Now().Add(startTimeout)
	for {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		select {
		case err := <-s.exited:
			s.exited <- err
			return nil, fmt.Errorf("the lcow snapshotter exited (%v) before listening:\n%s", err, s.logs)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("the lcow snapshotter did not listen on %s within %s:\n%s", sock, startTimeout, s.logs)
		}
	}
	dialCtx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	conn, err := grpc.DialContext(dialCtx, sock,
		grpc.WithInsecure(),
		grpc.WithBlock(),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", addr)
		}),
	)
	if err != nil {
		return nil, fmt.Errorf("connecting to the lcow snapshotter at %s: %w", sock, err)
	}
	return conn, nil
}

// stop ends the server by its pid (SIGTERM, then wait), releases the views it leaves mounted for
// a successor (`lcow cleanup`), reports what stayed mounted below the data root and, if nothing
// did, removes the data root.
func (s *server) stop() error {
	var errs []error
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-s.exited:
		if err != nil {
			errs = append(errs, fmt.Errorf("the lcow snapshotter exited with %v:\n%s", err, s.logs))
		}
	case <-time.After(stopTimeout):
		_ = s.cmd.Process.Kill()
		<-s.exited
		errs = append(errs, fmt.Errorf("the lcow snapshotter ignored SIGTERM for %s:\n%s", stopTimeout, s.logs))
	}
	if out, err := lcowCommand(s.root, "cleanup").CombinedOutput(); err != nil {
		errs = append(errs, fmt.Errorf("lcow cleanup: %v:\n%s", err, out))
	}
	if left := mountsBelow(s.root); len(left) > 0 {
		for _, point := range left {
			_ = unix.Unmount(point, unix.MNT_DETACH)
		}
		errs = append(errs, fmt.Errorf("still mounted below the data root after cleanup: %s", strings.Join(left, ", ")))
	} else if err := os.RemoveAll(s.ownDir); err != nil {
		errs = append(errs, err)
	}
	return joinErrors(errs...)
}

// mountsBelow lists the mount points at or below dir, deepest first.
func mountsBelow(dir string) []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return []string{fmt.Sprintf("(cannot read mountinfo: %v)", err)}
	}
	defer f.Close()
	var found []string
	scanner := bufio.NewScanner(f)
	for scanner.Scan() {
		fields := strings.Fields(scanner.Text())
		if len(fields) < 5 {
			continue
		}
		point := unescapeMountinfo(fields[4])
		if point == dir || strings.HasPrefix(point, dir+"/") {
			found = append(found, point)
		}
	}
	for i, j := 0, len(found)-1; i < j; i, j = i+1, j-1 {
		found[i], found[j] = found[j], found[i]
	}
	return found
}

// unescapeMountinfo undoes the kernel's octal escapes (\040 for a space...) of a mountinfo field.
func unescapeMountinfo(field string) string {
	var out strings.Builder
	for i := 0; i < len(field); i++ {
		if field[i] == '\\' && i+3 < len(field) {
			var v byte
			ok := true
			for _, c := range field[i+1 : i+4] {
				if c < '0' || c > '7' {
					ok = false
					break
				}
				v = v*8 + byte(c-'0')
			}
			if ok {
				out.WriteByte(v)
				i += 3
				continue
			}
		}
		out.WriteByte(field[i])
	}
	return out.String()
}

// joinErrors combines the non-nil errors into one (nil if none); Go 1.19 has no errors.Join.
func joinErrors(errs ...error) error {
	var texts []string
	for _, err := range errs {
		if err != nil {
			texts = append(texts, err.Error())
		}
	}
	if len(texts) == 0 {
		return nil
	}
	return fmt.Errorf("%s", strings.Join(texts, "\n"))
}
