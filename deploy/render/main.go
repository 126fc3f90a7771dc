// Command deploy-render renders a Helm chart the way `helm template` does, for checking the chart
// where helm is not installed: Go's text/template with sprig's functions, Helm's own include,
// tpl, required, toYaml/fromYaml/toJson/fromJson, and .Values, .Release, .Chart and .Template.
// It does not render subcharts, .Files, .Capabilities or lookup (the chart uses none of them).
//
// Usage: deploy-render [-f values.yaml]... [--set path=value]... [--set-file path=file]
//
//	[--namespace ns] [NAME] CHART
//
// --set takes a dotted path and one YAML scalar (no lists or commas, unlike helm's). The
// manifests go to stdout, ordered by kind like helm's install order, each under a
// "# Source:" line.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"text/template"

	"github.com/Masterminds/sprig/v3"
	"sigs.k8s.io/yaml"
)

type values = map[string]interface{}

// Metadata is the part of Chart.yaml the templates see as .Chart (helm's chart.Metadata).
type Metadata struct {
	APIVersion  string            `json:"apiVersion"`
	Name        string            `json:"name"`
	Version     string            `json:"version"`
	AppVersion  string            `json:"appVersion"`
	Description string            `json:"description"`
	Type        string            `json:"type"`
	KubeVersion string            `json:"kubeVersion"`
	Home        string            `json:"home"`
	Icon        string            `json:"icon"`
	Keywords    []string          `json:"keywords"`
	Sources     []string          `json:"sources"`
	Annotations map[string]string `json:"annotations"`
	Deprecated  bool              `json:"deprecated"`
}

// installOrder is the start of helm's install order: the kinds a chart like ours renders.
var installOrder = []string{"Namespace", "NetworkPolicy", "ResourceQuota", "LimitRange",
	"PodDisruptionBudget", "ServiceAccount", "Secret", "ConfigMap", "PersistentVolumeClaim",
	"Role", "RoleBinding", "Service", "DaemonSet", "Pod", "ReplicaSet", "Deployment",
	"HorizontalPodAutoscaler", "StatefulSet", "Job", "CronJob", "Ingress"}

func must(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "deploy-render:", err)
		os.Exit(1)
	}
}

func readYAML(path string, into interface{}) {
	data, err := os.ReadFile(path)
	must(err)
	must(yaml.Unmarshal(data, into))
}

// merge lays over onto base as helm coalesces values: maps merge, a null deletes the key.
func merge(base, over values) {
	for k, v := range over {
		sub, isMap := v.(values)
		if old, ok := base[k].(values); ok && isMap {
			merge(old, sub)
		} else if v == nil {
			delete(base, k)
		} else {
			base[k] = v
		}
	}
}

// set puts value at the dotted path, creating maps on the way.
func set(vals values, path string, value interface{}) {
	keys := strings.Split(path, ".")
	for _, k := range keys[:len(keys)-1] {
		if _, ok := vals[k].(values); !ok {
			vals[k] = values{}
		}
		vals = vals[k].(values)
	}
	merge(vals, values{keys[len(keys)-1]: value})
}

func main() {
	var files, sets, setFiles, positional []string
	namespace := "default"
	for args := os.Args[1:]; len(args) > 0; args = args[1:] {
		flag := map[string]*[]string{"-f": &files, "--values": &files, "--set": &sets, "--set-file": &setFiles}
		if list, ok := flag[args[0]]; ok && len(args) > 1 {
			*list, args = append(*list, args[1]), args[1:]
		} else if args[0] == "--namespace" && len(args) > 1 {
			namespace, args = args[1], args[1:]
		} else if strings.HasPrefix(args[0], "-") {
			must(fmt.Errorf("unknown flag %s", args[0]))
		} else {
			positional = append(positional, args[0])
		}
	}
	if len(positional) == 1 {
		positional = append([]string{"release-name"}, positional...)
	}
	if len(positional) != 2 {
		must(fmt.Errorf("usage: deploy-render [-f values.yaml] [--set k=v] [--set-file k=file] [NAME] CHART"))
	}
	name, chartDir := positional[0], positional[1]

	var chart Metadata
	readYAML(filepath.Join(chartDir, "Chart.yaml"), &chart)
	vals := values{}
	readYAML(filepath.Join(chartDir, "values.yaml"), &vals)
	for _, f := range files {
		over := values{}
		readYAML(f, &over)
		merge(vals, over)
	}
	for _, s := range sets {
		path, raw, _ := strings.Cut(s, "=")
		var v interface{} = raw
		if raw != "" {
			must(yaml.Unmarshal([]byte(raw), &v))
		}
		set(vals, path, v)
	}
	for _, s := range setFiles {
		path, file, _ := strings.Cut(s, "=")
		data, err := os.ReadFile(file)
		must(err)
		set(vals, path, string(data))
	}

	t := template.New("gotpl").Option("missingkey=zero")
	funcs := sprig.TxtFuncMap()
	delete(funcs, "env")
	delete(funcs, "expandenv")
	funcs["toYaml"] = func(v interface{}) string {
		data, err := yaml.Marshal(v)
		if err != nil {
			return ""
		}
		return strings.TrimSuffix(string(data), "\n")
	}
	funcs["fromYaml"] = func(s string) values {
		m := values{}
		if err := yaml.Unmarshal([]byte(s), &m); err != nil {
			m["Error"] = err.Error()
		}
		return m
	}
	funcs["toJson"] = func(v interface{}) string {
		data, err := json.Marshal(v)
		if err != nil {
			return ""
		}
		return string(data)
	}
	funcs["include"] = func(name string, data interface{}) (string, error) {
		var buf strings.Builder
		err := t.ExecuteTemplate(&buf, name, data)
		return buf.String(), err
	}
	funcs["tpl"] = func(text string, data interface{}) (string, error) {
		clone, err := t.Clone()
		if err == nil {
			_, err = clone.New("tpl").Parse(text)
		}
		var buf strings.Builder
		if err == nil {
			err = clone.ExecuteTemplate(&buf, "tpl", data)
		}
		return buf.String(), err
	}
	funcs["required"] = func(msg string, v interface{}) (interface{}, error) {
		if s, isString := v.(string); v == nil || (isString && s == "") {
			return v, fmt.Errorf("%s", msg)
		}
		return v, nil
	}
	t.Funcs(funcs)

	paths, err := filepath.Glob(filepath.Join(chartDir, "templates", "*"))
	must(err)
	sort.Strings(paths)
	for _, p := range paths {
		data, err := os.ReadFile(p)
		must(err)
		_, err = t.New(chart.Name + "/templates/" + filepath.Base(p)).Parse(string(data))
		must(err)
	}
	release := values{"Name": name, "Namespace": namespace, "Service": "Helm",
		"IsInstall": true, "IsUpgrade": false, "Revision": 1}
	type manifest struct{ source, kind, body string }
	var out []manifest
	for _, p := range paths {
		base := filepath.Base(p)
		if strings.HasPrefix(base, "_") || base == "NOTES.txt" {
			continue
		}
		source := chart.Name + "/templates/" + base
		top := values{"Values": vals, "Release": release, "Chart": chart,
			"Template": values{"Name": source, "BasePath": chart.Name + "/templates"}}
		var buf strings.Builder
		must(t.ExecuteTemplate(&buf, source, top))
		text := strings.ReplaceAll(buf.String(), "<no value>", "")
		for _, doc := range regexp.MustCompile(`(?m)^---\s*$`).Split(text, -1) {
			if strings.TrimSpace(doc) == "" {
				continue
			}
			var head struct{ Kind string }
			if err := yaml.Unmarshal([]byte(doc), &head); err != nil {
				must(fmt.Errorf("YAML parse error on %s: %v", source, err))
			}
			out = append(out, manifest{source, head.Kind, strings.TrimSpace(doc)})
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
