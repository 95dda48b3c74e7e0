{{/* Chart name, overridable. */}}
{{- define "inferwatch.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: <release>-<chart>, 63 chars at most, without repeating the chart name. */}}
{{- define "inferwatch.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Name of one component's resources: <fullname>-<component>. */}}
{{- define "inferwatch.componentName" -}}
{{- printf "%s-%s" (include "inferwatch.fullname" .root | trunc 50 | trimSuffix "-") .component }}
{{- end }}

{{- define "inferwatch.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every resource. */}}
{{- define "inferwatch.labels" -}}
helm.sh/chart: {{ include "inferwatch.chart" . }}
{{ include "inferwatch.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: inferwatch
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels: only name and instance, because selectors are immutable. */}}
{{- define "inferwatch.selectorLabels" -}}
app.kubernetes.io/name: {{ include "inferwatch.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of one component: call with (dict "root" $ "component" "exporter"). */}}
{{- define "inferwatch.componentLabels" -}}
{{ include "inferwatch.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "inferwatch.componentSelectorLabels" -}}
{{ include "inferwatch.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* The image reference; a digest pins it. */}}
{{- define "inferwatch.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{- define "inferwatch.remediator.serviceAccountName" -}}
{{- if .Values.remediator.serviceAccount.create }}
{{- default (include "inferwatch.componentName" (dict "root" . "component" "remediator")) .Values.remediator.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.remediator.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Namespaces the remediator acts in (JSON list); the release namespace when none is given. */}}
{{- define "inferwatch.remediator.namespaces" -}}
{{- $ns := .Values.remediator.namespaces | default (list .Release.Namespace) }}
{{- toJson (uniq $ns) }}
{{- end }}

{{/* "true" when the remediator elects a leader: always with more than one replica. */}}
{{- define "inferwatch.remediator.leaderElection" -}}
{{- if or (gt (int .Values.remediator.replicas) 1) .Values.remediator.leaderElection.enabled }}true{{ end }}
{{- end }}

{{- define "inferwatch.remediator.secretName" -}}
{{- default (include "inferwatch.componentName" (dict "root" . "component" "remediator")) .Values.remediator.auth.existingSecret }}
{{- end }}

{{/*
RBAC rules the remediator's kubernetes backend needs, per enabled action (JSON: {"namespaced":
[...], "cluster": [...]}). Mirrors remediations/backends/kubernetes.py: every namespaced action
resolves its target (get the pod, its ReplicaSet, its Deployment) and records an Event.
*/}}
{{- define "inferwatch.remediator.rbacRules" -}}
{{- $a := .Values.remediator.actions }}
{{- $ns := list }}
{{- $cluster := list }}
{{- if or $a.scale $a.swapModel $a.restart $a.drain }}
{{- $ns = append $ns (dict "apiGroups" (list "") "resources" (list "events") "verbs" (list "create")) }}
{{- $ns = append $ns (dict "apiGroups" (list "apps") "resources" (list "deployments" "replicasets") "verbs" (list "get")) }}
{{- $podVerbs := list "get" }}
{{- if or $a.restart $a.drain $a.swapModel }}
{{- /* swap_model lists pods to verify every ready one runs the new model */}}
{{- $podVerbs = append $podVerbs "list" }}
{{- end }}
{{- if or $a.restart $a.drain }}
{{- $podVerbs = append $podVerbs "patch" }}
{{- end }}
{{- if $a.restart }}
{{- $podVerbs = append $podVerbs "delete" }}
{{- end }}
{{- $ns = append $ns (dict "apiGroups" (list "") "resources" (list "pods") "verbs" $podVerbs) }}
{{- end }}
{{- if $a.scale }}
{{- $ns = append $ns (dict "apiGroups" (list "apps") "resources" (list "deployments/scale") "verbs" (list "patch")) }}
{{- /* scale goes through an HPA or KEDA ScaledObject that owns the Deployment (raises its minimum) */}}
{{- $ns = append $ns (dict "apiGroups" (list "autoscaling") "resources" (list "horizontalpodautoscalers") "verbs" (list "list" "patch")) }}
{{- $ns = append $ns (dict "apiGroups" (list "keda.sh") "resources" (list "scaledobjects") "verbs" (list "list" "patch")) }}
{{- end }}
{{- $ha := include "inferwatch.remediator.leaderElection" . }}
{{- if or $a.swapModel (and $ha (or $a.scale $a.restart $a.drain)) }}
{{- /* swap_model patches the model; with leader election every action keeps its claim, cooldown,
  attempts and in-progress record in annotations on the target Deployment (patches with a
  resourceVersion precondition), and a new leader lists the Deployments to adopt them */}}
{{- $ns = append $ns (dict "apiGroups" (list "apps") "resources" (list "deployments") "verbs" (ternary (list "list" "patch") (list "patch") (not (empty $ha)))) }}
{{- end }}
{{- if $a.drainNode }}
{{- /* Evictions only in the configured namespaces; finding the node's pods needs a cluster-wide list. */}}
{{- $ns = append $ns (dict "apiGroups" (list "") "resources" (list "pods/eviction") "verbs" (list "create")) }}
{{- $cluster = append $cluster (dict "apiGroups" (list "") "resources" (list "nodes") "verbs" (list "get" "list" "patch")) }}
{{- $cluster = append $cluster (dict "apiGroups" (list "") "resources" (list "pods") "verbs" (list "list")) }}
{{- $cluster = append $cluster (dict "apiGroups" (list "") "resources" (list "events") "verbs" (list "create")) }}
{{- end }}
{{- toJson (dict "namespaced" $ns "cluster" $cluster) }}
{{- end }}

{{/* Settings of the llm collector's Kubernetes pod discovery (a dict; empty when unset). */}}
{{- define "inferwatch.exporter.discovery" -}}
{{- $llm := .Values.exporter.collectors.llm | default dict }}
{{- toJson ($llm.kubernetes | default dict) }}
{{- end }}
