package safesync_test

import (
	"os"
	"strings"
	"testing"
)

// A module that imports safesync gets the root module's requirements in its
// module graph (and, through go mod tidy, those of the root package's
// tests). The root module therefore requires only what its packages compile
// with, plus miniredis for the in-memory Redis of safesynctest; the embedded
// MySQL engine, the Docker harness, the demo and the benchmarks are modules
// of their own.

// rootRequirements are the modules the root go.mod may require directly.
var rootRequirements = map[string]string{
	"github.com/alicebob/miniredis/v2":    "safesynctest's in-memory Redis (pure Go)",
	"github.com/cenkalti/backoff/v4":      "retry policies",
	"github.com/go-sql-driver/mysql":      "MySQL error numbers and DSNs",
	"github.com/jackc/puddle/v2":          "handler slots",
	"github.com/prometheus/client_golang": "metrics",
	"github.com/prometheus/client_model":  "reading metrics in safesynctest",
	"github.com/redis/rueidis":            "the Redis client",
}

// heavyModules must never appear among the root module's requirements,
// direct or indirect.
var heavyModules = []string{
	"github.com/dolthub/", "vitess", "github.com/tetratelabs/wazero", "icu",
	"github.com/docker/", "github.com/ory/dockertest", "github.com/opencontainers/",
	"github.com/containerd/", "github.com/sirupsen/logrus", "google.golang.org/grpc",
	"google.golang.org/genproto", "go.opentelemetry.io/", "github.com/chromedp/",
	"github.com/ThreeDotsLabs/", "github.com/redis/go-redis",
}

func TestRootModuleRequiresOnlyWhatItsPackagesCompileWith(t *testing.T) {
	data, err := os.ReadFile("go.mod")
	if err != nil {
		t.Fatal(err)
	}
	inBlock := false
	for _, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		switch {
		case line == "require (":
			inBlock = true
			continue
		case inBlock && line == ")":
			inBlock = false
			continue
		case strings.HasPrefix(line, "require "):
			line = strings.TrimPrefix(line, "require ")
		case !inBlock:
			continue
		}
		fields := strings.Fields(line)
		if len(fields) < 2 {
			continue
		}
		path, indirect := fields[0], strings.Contains(line, "// indirect")
		for _, heavy := range heavyModules {
			if strings.Contains(path, heavy) {
				t.Errorf("go.mod requires %s; heavy modules belong in a module of their own (see go.work)", path)
			}
		}
		if _, ok := rootRequirements[path]; !ok && !indirect {
			t.Errorf("go.mod requires %s directly; add it to rootRequirements only if a root package compiles with it", path)
		}
	}
}
