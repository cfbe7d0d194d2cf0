{{/*
The operator's permissions, one rule set per concern. Every verb here is one the operator or
kopf calls; docs/install.md says which call needs which rule. The kustomize manifests carry the
same rules, and tests/deploy compares them.
*/}}

{{/* In every namespace served: MatchIngestions, their children, Events. */}}
{{- define "matchops.rules.pipelines" -}}
# kopf lists and watches MatchIngestions and patches them (its finalizer and progress); the
# operator lists them to find pipelines that share a queue.
- apiGroups: [matchops.dev]
  resources: [matchingestions]
  verbs: [get, list, watch, patch]
# Conditions, backlog and worker figures.
- apiGroups: [matchops.dev]
  resources: [matchingestions/status]
  verbs: [get, patch]
# Children carry blockOwnerDeletion; clusters with the OwnerReferencesPermissionEnforcement
# admission plugin require this to set it.
- apiGroups: [matchops.dev]
  resources: [matchingestions/finalizers]
  verbs: [update]
# The scraper CronJob and the worker Deployment: read, server-side apply (create + patch),
# delete when the spec drops them.
- apiGroups: [batch]
  resources: [cronjobs]
  verbs: [get, create, patch, delete]
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, create, patch, delete]
# Events on MatchIngestions (the operator's and kopf's), shown by `kubectl describe mi`.
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- end }}

{{/* The broker URL and database DSN Secrets: read one by name, never list. */}}
{{- define "matchops.rules.secrets" -}}
- apiGroups: [""]
  resources: [secrets]
  verbs: [get]
{{- end }}

{{/* Cluster-scoped, in both modes: kopf notices the CRD being installed or changed. */}}
{{- define "matchops.rules.discovery" -}}
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [list, watch]
{{- end }}

{{/* kopf peering: which operator replica is active. */}}
{{- define "matchops.rules.peering" -}}
{{- if eq .Values.watch.mode "cluster" }}
- apiGroups: [kopf.dev]
  resources: [clusterkopfpeerings]
  verbs: [get, list, watch, patch]
{{- else }}
- apiGroups: [kopf.dev]
  resources: [kopfpeerings]
  verbs: [get, list, watch, patch]
{{- end }}
{{- end }}

{{- define "matchops.subjects" -}}
- kind: ServiceAccount
  name: {{ include "matchops.serviceAccountName" . }}
  namespace: {{ .Release.Namespace }}
{{- end }}
