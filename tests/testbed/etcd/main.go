// Command etcd runs the upstream etcd server (go.etcd.io/etcd/server/v3) with
// the same command-line flags as the etcd binary.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
