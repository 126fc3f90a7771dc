// Command deploy-render renders a Helm chart as `helm template` does, to check the chart where
// helm is not installed: text/template with sprig's functions (less env and expandenv), Helm's
// include, tpl, required and toYaml (sigs.k8s.io/yaml), and .Values, .Release, .Chart, .Template.
// No subcharts, .Files, .Capabilities or lookup: the chart uses none of them.
//
// Usage: deploy-render [-f values.yaml]... [--set path=scalar]... [--namespace ns] [NAME] CHART,
// flags first. Unlike helm's, --set takes one scalar (no lists, no commas), typed as helm does.
// The manifests go to stdout in helm's install order, each under its "# Source:" line.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"text/template"

	"github.com/Masterminds/sprig/v3"
	"sigs.k8s.io/yaml"
)

type values = map[string]interface{}

// installOrder is the start of helm's install order; other kinds come after these.
var installOrder = strings.Fields(`Namespace NetworkPolicy ResourceQuota LimitRange
	PodSecurityPolicy PodDisruptionBudget ServiceAccount Secret SecretList ConfigMap StorageClass
	PersistentVolume PersistentVolumeClaim CustomResourceDefinition ClusterRole ClusterRoleList
	ClusterRoleBinding ClusterRoleBindingList Role RoleList RoleBinding RoleBindingList Service
	DaemonSet Pod ReplicationController ReplicaSet Deployment HorizontalPodAutoscaler StatefulSet
	Job CronJob IngressClass Ingress APIService`)

func must(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "deploy-render:", err)
		os.Exit(1)
	}
}

func readYAML(path string) values {
	data, err := os.ReadFile(path)
	must(err)
	v := values{}
	must(yaml.Unmarshal(data, &v))
	return v
}

// merge lays over onto base as helm coalesces values: maps merge, a null deletes the key.
func merge(base, over values) {
	for k, v := range over {
		old, baseIsMap := base[k].(values)
		if sub, isMap := v.(values); isMap && baseIsMap {
			merge(old, sub)
		} else if v == nil {
			delete(base, k)
		} else {
			base[k] = v
		}
	}
}

// set puts value at a dotted path, making maps on the way.
func set(vals values, path string, value interface{}) {
	for i := len(path) - 1; i >= 0; i-- {
		if path[i] == '.' {
			value, path = values{path[i+1:]: value}, path[:i]
		}
	}
	merge(vals, values{path: value})
}

// typed is a --set value as helm types it: true, false, null, an integer, else a string.
func typed(val string) interface{} {
	lower := strings.ToLower(val)
	if lower == "true" || lower == "false" || lower == "null" || val == "0" {
		var v interface{}
		must(yaml.Unmarshal([]byte(lower), &v))
		return v
	} else if n, err := strconv.ParseInt(val, 10, 64); err == nil && val[0] != '0' {
		return n
	}
	return val
}

// list is a flag that may be given more than once.
type list []string

func (l *list) String() string     { return strings.Join(*l, ",") }
func (l *list) Set(s string) error { *l = append(*l, s); return nil }

func main() {
	var files, sets list
	flag.Var(&files, "f", "a values file laid over values.yaml (repeatable, in order)")
	flag.Var(&sets, "set", "path=scalar, laid over the values files (repeatable)")
	namespace := flag.String("namespace", "default", ".Release.Namespace")
	flag.Parse()
	args := flag.Args()
	if len(args) == 1 {
		args = append([]string{"release-name"}, args...)
	}
	if len(args) != 2 {
		must(fmt.Errorf("usage: deploy-render [-f values.yaml] [-set path=scalar] [NAME] CHART"))
	}
	// .Chart has Chart.yaml's fields with helm's Go names (name -> Name, appVersion -> AppVersion).
	chart, meta := values{}, readYAML(filepath.Join(args[1], "Chart.yaml"))
	for k, v := range meta {
		chart[strings.Replace(strings.ToUpper(k[:1])+k[1:], "Api", "API", 1)] = v
	}
	vals := readYAML(filepath.Join(args[1], "values.yaml"))
	for _, f := range files {
		merge(vals, readYAML(f))
	}
	for _, kv := range sets {
		key, val, _ := strings.Cut(kv, "=")
		set(vals, key, typed(val))
	}

	t := template.New("gotpl").Option("missingkey=zero")
	funcs := sprig.TxtFuncMap()
	delete(funcs, "env")
	delete(funcs, "expandenv")
	funcs["toYaml"] = func(v interface{}) string {
		data, _ := yaml.Marshal(v) // helm too prints nothing for what it cannot marshal
		return strings.TrimSuffix(string(data), "\n")
	}
	funcs["include"] = func(name string, data interface{}) (string, error) {
		var buf strings.Builder
		err := t.ExecuteTemplate(&buf, name, data)
		return buf.String(), err
	}
	funcs["tpl"] = func(text string, data interface{}) (string, error) {
		clone := template.Must(t.Clone())
		if _, err := clone.New("tpl").Parse(text); err != nil {
			return "", err
		}
		var buf strings.Builder
		err := clone.ExecuteTemplate(&buf, "tpl", data)
		return buf.String(), err
	}
	funcs["required"] = func(msg string, v interface{}) (interface{}, error) {
		if s, isString := v.(string); v == nil || (isString && s == "") {
			return v, fmt.Errorf("%s", msg)
		}
		return v, nil
	}
	t.Funcs(funcs)

	paths, err := filepath.Glob(filepath.Join(args[1], "templates", "*"))
	must(err)
	sort.Strings(paths)
	prefix := fmt.Sprint(chart["Name"], "/templates/")
	for _, p := range paths {
		data, err := os.ReadFile(p)
		must(err)
		_, err = t.New(prefix + filepath.Base(p)).Parse(string(data))
		must(err)
	}
	release := values{"Name": args[0], "Namespace": *namespace, "Service": "Helm",
		"IsInstall": true, "IsUpgrade": false, "Revision": 1}
	var out []struct{ kind, source, body string }
	for _, p := range paths {
		source := prefix + filepath.Base(p)
		if strings.HasPrefix(filepath.Base(p), "_") || filepath.Base(p) == "NOTES.txt" {
			continue
		}
		var buf strings.Builder
		must(t.ExecuteTemplate(&buf, source, values{"Values": vals, "Release": release, "Chart": chart,
			"Template": values{"Name": source, "BasePath": strings.TrimSuffix(prefix, "/")}}))
		text := strings.ReplaceAll(buf.String(), "<no value>", "")
		for _, doc := range regexp.MustCompile(`(?m)^---\s*$`).Split(text, -1) {
			var head struct{ Kind string }
			if doc = strings.TrimSpace(doc); doc == "" {
				continue
			} else if err := yaml.Unmarshal([]byte(doc), &head); err != nil {
				must(fmt.Errorf("YAML parse error on %s: %v", source, err))
			}
			out = append(out, struct{ kind, source, body string }{head.Kind, source, doc})
		}
	}
	rank := func(kind string) int {
		for i, k := range installOrder {
			if k == kind {
				return i
			}
		}
		return len(installOrder)
	}
	sort.SliceStable(out, func(i, j int) bool { return rank(out[i].kind) < rank(out[j].kind) })
	for _, m := range out {
		fmt.Printf("---\n# Source: %s\n%s\n", m.source, m.body)
	}
}
