// gopull pulls and unpacks an image the way containerd 1.6's CRI plugin does: client.Pull
// with WithPullUnpack, a snapshotter, at most three downloads at once, and the image handler
// that labels each layer's Prepare with its blob digest (pkg/snapshotters), so that the
// snapshotter is told which layer it prepares (containerd.io/snapshot.ref and
// containerd.io/snapshot/cri.layer-digest). `ctr images pull` sends neither label.
//
//	gopull -address SOCK [-namespace NS] [-snapshotter NAME] [-plain-http] REF
//
// Built in GOPATH mode against Debian's golang-github-containerd-containerd-dev (the same
// containerd version as the daemon); prints "<name> <manifest digest> <seconds>".
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/containerd/containerd"
	"github.com/containerd/containerd/namespaces"
	"github.com/containerd/containerd/pkg/snapshotters"
	"github.com/containerd/containerd/remotes/docker"
)

func main() {
	address := flag.String("address", "", "containerd's socket")
	namespace := flag.String("namespace", "default", "containerd namespace")
	snapshotter := flag.String("snapshotter", "lcow", "snapshotter to unpack into")
	plainHTTP := flag.Bool("plain-http", false, "talk to the registry over plain HTTP")
	flag.Parse()
	if *address == "" || flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: gopull -address SOCK [-namespace NS] [-snapshotter NAME] [-plain-http] REF")
		os.Exit(2)
	}
	ref := flag.Arg(0)
	if err := pull(*address, *namespace, *snapshotter, *plainHTTP, ref); err != nil {
		fmt.Fprintf(os.Stderr, "gopull: %s: %v\n", ref, err)
		os.Exit(1)
	}
}

func pull(address, namespace, snapshotter string, plainHTTP bool, ref string) error {
	client, err := containerd.New(address)
	if err != nil {
		return err
	}
	defer client.Close()
	ctx := namespaces.WithNamespace(context.Background(), namespace)
	var hostOpts []docker.RegistryOpt
	if plainHTTP {
		hostOpts = append(hostOpts, docker.WithPlainHTTP(docker.MatchAllHosts))
	}
	resolver := docker.NewResolver(docker.ResolverOptions{
		Hosts: docker.ConfigureDefaultRegistries(hostOpts...),
	})
	start := time.Now()
	image, err := client.Pull(ctx, ref,
		containerd.WithResolver(resolver),
		containerd.WithPullUnpack,
		containerd.WithPullSnapshotter(snapshotter),
		containerd.WithMaxConcurrentDownloads(3),
		containerd.WithImageHandlerWrapper(snapshotters.AppendInfoHandlerWrapper(ref)),
	)
	if err != nil {
		return err
	}
	fmt.Printf("%s %s %.3f\n", image.Name(), image.Target().Digest, time.Since(start).Seconds())
	return nil
}
