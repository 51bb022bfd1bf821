// kube-testapi: a Kubernetes API server for gmon-agent's tests, built on the
// real k8s.io/apiserver library that Debian packages
// (golang-k8s-apiserver-dev): generic registry stores on etcd, with the
// library's own handlers, watch cache, field selectors and resourceVersions.
// It serves core/v1 pods (with the status subresource), nodes and
// namespaces on 127.0.0.1, over HTTPS with -tls-cert-file/-tls-key-file
// or plain HTTP. No admission, defaulting,
// authentication or authorization: the tests play kubelet by creating pods
// and writing pods/status themselves. Built by scripts/build-test-servers.sh.
//
// Usage: kube-testapi -listen 127.0.0.1:PORT -etcd http://127.0.0.1:2379
// [-tls-cert-file CERT -tls-key-file KEY]
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"k8s.io/apiserver/pkg/registry/generic"
	genericregistry "k8s.io/apiserver/pkg/registry/generic/registry"
	"k8s.io/apiserver/pkg/registry/rest"
	genericapiserver "k8s.io/apiserver/pkg/server"
	"k8s.io/apiserver/pkg/storage"
	"k8s.io/apiserver/pkg/storage/names"
	"k8s.io/apiserver/pkg/storage/storagebackend"
	openapinamer "k8s.io/apiserver/pkg/endpoints/openapi"
	"k8s.io/apiserver/pkg/util/compatibility"
	openapicommon "k8s.io/kube-openapi/pkg/common"
	openapiutil "k8s.io/kube-openapi/pkg/util"
	"k8s.io/kube-openapi/pkg/validation/spec"
	restclient "k8s.io/client-go/rest"
)

var (
	scheme = runtime.NewScheme()
	codecs = serializer.NewCodecFactory(scheme)
)

func init() {
	utilruntime.Must(corev1.AddToScheme(scheme))
	// The server's internal version is v1 itself: the same Go types are
	// registered as __internal too, so no conversion code is needed.
	internal := schema.GroupVersion{Group: "", Version: runtime.APIVersionInternal}
	scheme.AddKnownTypes(internal,
		&corev1.Pod{}, &corev1.PodList{},
		&corev1.Node{}, &corev1.NodeList{},
		&corev1.Namespace{}, &corev1.NamespaceList{})
	// Field selectors the real server supports for these kinds.
	utilruntime.Must(scheme.AddFieldLabelConversionFunc(corev1.SchemeGroupVersion.WithKind("Pod"),
		allowFields("metadata.name", "metadata.namespace", "spec.nodeName", "spec.restartPolicy",
			"spec.schedulerName", "spec.serviceAccountName", "spec.hostNetwork", "status.phase",
			"status.podIP", "status.nominatedNodeName")))
	utilruntime.Must(scheme.AddFieldLabelConversionFunc(corev1.SchemeGroupVersion.WithKind("Node"),
		allowFields("metadata.name", "spec.unschedulable")))
	utilruntime.Must(scheme.AddFieldLabelConversionFunc(corev1.SchemeGroupVersion.WithKind("Namespace"),
		allowFields("metadata.name", "status.phase")))
}

func allowFields(allowed ...string) runtime.FieldLabelConversionFunc {
	return func(label, value string) (string, string, error) {
		for _, a := range allowed {
			if a == label {
				return label, value, nil
			}
		}
		return "", "", fmt.Errorf("field label not supported: %s", label)
	}
}

func podAttrs(obj runtime.Object) (labels.Set, fields.Set, error) {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return nil, nil, fmt.Errorf("not a pod: %T", obj)
	}
	return labels.Set(pod.Labels), fields.Set{
		"metadata.name":          pod.Name,
		"metadata.namespace":     pod.Namespace,
		"spec.nodeName":          pod.Spec.NodeName,
		"spec.restartPolicy":     string(pod.Spec.RestartPolicy),
		"spec.schedulerName":     pod.Spec.SchedulerName,
		"spec.serviceAccountName": pod.Spec.ServiceAccountName,
		"spec.hostNetwork":       fmt.Sprint(pod.Spec.HostNetwork),
		"status.phase":           string(pod.Status.Phase),
		"status.podIP":           pod.Status.PodIP,
		"status.nominatedNodeName": pod.Status.NominatedNodeName,
	}, nil
}

func nodeAttrs(obj runtime.Object) (labels.Set, fields.Set, error) {
	node, ok := obj.(*corev1.Node)
	if !ok {
		return nil, nil, fmt.Errorf("not a node: %T", obj)
	}
	return labels.Set(node.Labels), fields.Set{
		"metadata.name":      node.Name,
		"spec.unschedulable": fmt.Sprint(node.Spec.Unschedulable),
	}, nil
}

func namespaceAttrs(obj runtime.Object) (labels.Set, fields.Set, error) {
	ns, ok := obj.(*corev1.Namespace)
	if !ok {
		return nil, nil, fmt.Errorf("not a namespace: %T", obj)
	}
	return labels.Set(ns.Labels), fields.Set{
		"metadata.name": ns.Name,
		"status.phase":  string(ns.Status.Phase),
	}, nil
}

// strategy is the create/update/delete policy of one resource. As in the
// real server, writes to the main resource keep the status and writes to
// /status keep everything else.
type strategy struct {
	runtime.ObjectTyper
	names.NameGenerator
	namespaced bool
	status     bool
}

func (s strategy) NamespaceScoped() bool { return s.namespaced }
func (s strategy) PrepareForCreate(_ context.Context, obj runtime.Object) {
	if pod, ok := obj.(*corev1.Pod); ok {
		pod.Status = corev1.PodStatus{Phase: corev1.PodPending}
	}
}
func (s strategy) Validate(context.Context, runtime.Object) field.ErrorList           { return nil }
func (s strategy) WarningsOnCreate(context.Context, runtime.Object) []string          { return nil }
func (s strategy) Canonicalize(runtime.Object)                                        {}
func (s strategy) AllowCreateOnUpdate() bool                                          { return false }
func (s strategy) AllowUnconditionalUpdate() bool                                     { return true }
func (s strategy) ValidateUpdate(context.Context, runtime.Object, runtime.Object) field.ErrorList {
	return nil
}
func (s strategy) WarningsOnUpdate(context.Context, runtime.Object, runtime.Object) []string {
	return nil
}
func (s strategy) PrepareForUpdate(_ context.Context, obj, old runtime.Object) {
	pod, ok := obj.(*corev1.Pod)
	oldPod, _ := old.(*corev1.Pod)
	if !ok || oldPod == nil {
		return
	}
	if s.status {
		pod.Spec = oldPod.Spec
		pod.OwnerReferences = oldPod.OwnerReferences
	} else {
		pod.Status = oldPod.Status
	}
}

func openAPIDefinitions(openapicommon.ReferenceCallback) map[string]openapicommon.OpenAPIDefinition {
	defs := map[string]openapicommon.OpenAPIDefinition{}
	for _, obj := range []runtime.Object{
		&corev1.Pod{}, &corev1.PodList{}, &corev1.Node{}, &corev1.NodeList{},
		&corev1.Namespace{}, &corev1.NamespaceList{},
	} {
		schema := spec.Schema{SchemaProps: spec.SchemaProps{Type: []string{"object"}}}
		schema.AddExtension("x-kubernetes-preserve-unknown-fields", true)
		defs[openapiutil.GetCanonicalTypeName(obj)] = openapicommon.OpenAPIDefinition{Schema: schema}
	}
	return defs
}

type restOptions struct{ config *storagebackend.Config }

func (o restOptions) GetRESTOptions(gr schema.GroupResource, _ runtime.Object) (generic.RESTOptions, error) {
	return generic.RESTOptions{
		StorageConfig:           o.config.ForResource(gr),
		Decorator:               genericregistry.StorageWithCacher(),
		DeleteCollectionWorkers: 1,
		ResourcePrefix:          gr.Resource,
		CountMetricPollPeriod:   time.Minute,
	}, nil
}

func newStore(opts generic.RESTOptionsGetter, resource, singular string, namespaced bool,
	newObj, newList func() runtime.Object, attrs storage.AttrFunc) (*genericregistry.Store, error) {
	s := strategy{ObjectTyper: scheme, NameGenerator: names.SimpleNameGenerator, namespaced: namespaced}
	store := &genericregistry.Store{
		NewFunc:     newObj,
		NewListFunc: newList,
		PredicateFunc: func(l labels.Selector, f fields.Selector) storage.SelectionPredicate {
			return storage.SelectionPredicate{Label: l, Field: f, GetAttrs: attrs}
		},
		DefaultQualifiedResource:  schema.GroupResource{Resource: resource},
		SingularQualifiedResource: schema.GroupResource{Resource: singular},
		CreateStrategy:            s,
		UpdateStrategy:            s,
		DeleteStrategy:            s,
		TableConvertor:            rest.NewDefaultTableConvertor(schema.GroupResource{Resource: resource}),
	}
	err := store.CompleteWithOptions(&generic.StoreOptions{RESTOptions: opts, AttrFunc: attrs})
	return store, err
}

// statusREST serves pods/status: get, update and patch.
type statusREST struct{ store *genericregistry.Store }

func (r *statusREST) New() runtime.Object { return &corev1.Pod{} }
func (r *statusREST) Destroy()            {}
func (r *statusREST) Get(ctx context.Context, name string, options *metav1.GetOptions) (runtime.Object, error) {
	return r.store.Get(ctx, name, options)
}
func (r *statusREST) Update(ctx context.Context, name string, objInfo rest.UpdatedObjectInfo,
	createValidation rest.ValidateObjectFunc, updateValidation rest.ValidateObjectUpdateFunc,
	_ bool, options *metav1.UpdateOptions) (runtime.Object, bool, error) {
	return r.store.Update(ctx, name, objInfo, createValidation, updateValidation, false, options)
}

func main() {
	listen := flag.String("listen", "127.0.0.1:6443", "address to serve the API on (HTTP, or HTTPS with -tls-cert-file)")
	plain := flag.String("listen-http", "", "also serve plain HTTP here (for test harnesses without TLS)")
	etcd := flag.String("etcd", "http://127.0.0.1:2379", "etcd client URL")
	prefix := flag.String("prefix", "/registry", "etcd key prefix")
	cert := flag.String("tls-cert-file", "", "serve HTTPS with this certificate (PEM) instead of HTTP")
	key := flag.String("tls-key-file", "", "the certificate's private key (PEM)")
	flag.Parse()
	if err := run(*listen, *plain, *etcd, *prefix, *cert, *key); err != nil {
		fmt.Fprintf(os.Stderr, "kube-testapi: %v\n", err)
		os.Exit(1)
	}
}

func run(listen, plain, etcd, prefix, cert, key string) error {
	storageConfig := storagebackend.NewDefaultConfig(prefix, codecs.LegacyCodec(corev1.SchemeGroupVersion))
	storageConfig.Transport.ServerList = []string{etcd}
	opts := restOptions{config: storageConfig}

	pods, err := newStore(opts, "pods", "pod", true,
		func() runtime.Object { return &corev1.Pod{} },
		func() runtime.Object { return &corev1.PodList{} }, podAttrs)
	if err != nil {
		return fmt.Errorf("pods store: %w", err)
	}
	podStatus := *pods
	podStatus.UpdateStrategy = strategy{ObjectTyper: scheme, NameGenerator: names.SimpleNameGenerator, namespaced: true, status: true}
	nodes, err := newStore(opts, "nodes", "node", false,
		func() runtime.Object { return &corev1.Node{} },
		func() runtime.Object { return &corev1.NodeList{} }, nodeAttrs)
	if err != nil {
		return fmt.Errorf("nodes store: %w", err)
	}
	namespaces, err := newStore(opts, "namespaces", "namespace", false,
		func() runtime.Object { return &corev1.Namespace{} },
		func() runtime.Object { return &corev1.NamespaceList{} }, namespaceAttrs)
	if err != nil {
		return fmt.Errorf("namespaces store: %w", err)
	}

	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return fmt.Errorf("-listen %q: %w", listen, err)
	}
	cfg := genericapiserver.NewConfig(codecs)
	cfg.EffectiveVersion = compatibility.DefaultBuildEffectiveVersion()
	cfg.ExternalAddress = net.JoinHostPort(host, port)
	cfg.LoopbackClientConfig = &restclient.Config{Host: "http://" + listen}
	cfg.RESTOptionsGetter = opts
	// Server-side apply needs a schema per kind. Kubernetes' generated
	// OpenAPI definitions are not a library, so each served kind gets an
	// open object schema (fields tracked as deduced, as for CRDs without a
	// structural schema); the namer adds the group-version-kind.
	cfg.OpenAPIV3Config = genericapiserver.DefaultOpenAPIV3Config(openAPIDefinitions, openapinamer.NewDefinitionNamer(scheme))
	cfg.SkipOpenAPIInstallation = true
	// No user is authenticated, so per-user flow control cannot apply.
	cfg.FlowControl = nil
	cfg.MaxRequestsInFlight = 0
	cfg.MaxMutatingRequestsInFlight = 0
	server, err := cfg.Complete(nil).New("kube-testapi", genericapiserver.NewEmptyDelegate())
	if err != nil {
		return err
	}
	group := genericapiserver.NewDefaultAPIGroupInfo("", scheme, runtime.NewParameterCodec(scheme), codecs)
	group.VersionedResourcesStorageMap["v1"] = map[string]rest.Storage{
		"pods":        pods,
		"pods/status": &statusREST{store: &podStatus},
		"nodes":       nodes,
		"namespaces":  namespaces,
	}
	if err := server.InstallLegacyAPIGroup(genericapiserver.DefaultLegacyAPIPrefix, &group); err != nil {
		return fmt.Errorf("install core/v1: %w", err)
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	prepared := server.PrepareRun()
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return err
	}
	httpServer := &http.Server{Handler: prepared.Handler}
	go func() {
		serve := func() error { return httpServer.Serve(ln) }
		if cert != "" {
			serve = func() error { return httpServer.ServeTLS(ln, cert, key) }
		}
		if err := serve(); err != nil && err != http.ErrServerClosed {
			fmt.Fprintf(os.Stderr, "kube-testapi: serve: %v\n", err)
			os.Exit(1)
		}
	}()
	scheme := "http"
	if cert != "" {
		scheme = "https"
	}
	fmt.Fprintf(os.Stderr, "kube-testapi: serving core/v1 on %s://%s (etcd %s)\n", scheme, listen, etcd)
	var plainServer *http.Server
	if plain != "" {
		pln, err := net.Listen("tcp", plain)
		if err != nil {
			return err
		}
		plainServer = &http.Server{Handler: prepared.Handler}
		go func() { _ = plainServer.Serve(pln) }()
		fmt.Fprintf(os.Stderr, "kube-testapi: and on http://%s\n", plain)
	}
	runErr := make(chan error, 1)
	go func() { runErr <- prepared.RunWithContext(ctx) }()
	select {
	case err = <-runErr:
	case <-ctx.Done():
		// Tests stop and restart the server: drop open watches at once
		// (clients see them end, as when a real API server goes away).
	}
	_ = httpServer.Close()
	if plainServer != nil {
		_ = plainServer.Close()
	}
	return err
}
