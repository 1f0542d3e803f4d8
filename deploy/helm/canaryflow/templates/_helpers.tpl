{{/*
The four services: values key -> (Python module, component name). Every per-service template
ranges over this list, so a service is described once.
*/}}
{{- define "canaryflow.services" -}}
planner: {module: canaryflow.planner, component: planner}
executor: {module: canaryflow.executor, component: executor}
metricsWatcher: {module: canaryflow.metrics_watcher, component: metrics-watcher}
rollback: {module: canaryflow.rollback, component: rollback}
{{- end -}}

{{- define "canaryflow.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "canaryflow.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "canaryflow.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/*
Least privilege, per service (one place: the ClusterRoles and the namespaced Roles both come
from here). The planner and the metrics-watcher only read; only the executor creates
Deployments; the executor and the rollback service read the ConfigMaps and Secrets a target
references (to record and restore them) and write the release's bundle Secret. Nobody reads
Pods, Services, RBAC or anything cluster-scoped. tests/e2e/test_helm.py shows each rule is
used by a real release through the API server's audit log, and the refusals.
*/}}
{{- define "canaryflow.rules.planner" -}}
- apiGroups: ["apps"]
  resources: ["deployments"]  # the target, to validate a request against it
  verbs: ["get"]
- apiGroups: [""]
  resources: ["configmaps"]  # which ConfigMaps a release may change (their base names)
  verbs: ["get"]
- apiGroups: ["canaryflow.io"]
  resources: ["releasepolicies"]  # the policies of the target's namespace
  verbs: ["list"]
{{- end -}}

{{- define "canaryflow.rules.metricsWatcher" -}}
- apiGroups: ["canaryflow.io"]
  resources: ["releasepolicies"]  # the release's policy: its analysis
  verbs: ["get"]
{{- end -}}

{{- define "canaryflow.rules.executor" -}}
- apiGroups: ["apps"]
  resources: ["deployments"]  # the canary made and removed, stable stepped and promoted; watched by the waits
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
- apiGroups: [""]
  resources: ["configmaps"]  # the canary's copies; the promoted copy's predecessors deleted
  verbs: ["get", "list", "create", "update", "delete"]
- apiGroups: [""]
  resources: ["secrets"]  # those the target references (recorded) and the release's bundle
  verbs: ["get", "create", "update", "delete"]
- apiGroups: ["autoscaling"]
  resources: ["horizontalpodautoscalers"]  # found, held for the release, restored
  verbs: ["get", "list", "update"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]  # found, recorded, restored
  verbs: ["get", "list", "update"]
- apiGroups: ["canaryflow.io"]
  resources: ["releasepolicies"]  # the policy's resources and hooks
  verbs: ["list"]
{{- include "canaryflow.rules.routersForward" . }}
{{- end -}}

{{- define "canaryflow.rules.rollback" -}}
- apiGroups: ["apps"]
  resources: ["deployments"]  # stable restored, the canary removed; never created; watched by the waits
  verbs: ["get", "list", "watch", "update", "delete"]
- apiGroups: [""]
  resources: ["configmaps"]  # recorded ones put back, the release's copies deleted
  verbs: ["get", "list", "create", "update", "delete"]
- apiGroups: [""]
  resources: ["secrets"]  # recorded ones put back, the release's bundle read and deleted
  verbs: ["get", "create", "update", "delete"]
- apiGroups: ["autoscaling"]
  resources: ["horizontalpodautoscalers"]  # the hold ended
  verbs: ["get", "update"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]  # put back as recorded
  verbs: ["get", "update"]
- apiGroups: ["canaryflow.io"]
  resources: ["releasepolicies"]  # which router the release routed with
  verbs: ["list"]
{{- include "canaryflow.rules.routersBack" . }}
{{- end -}}


{{/*
The traffic routers' rules, only for the routers listed in traffic.routers (the services
refuse a policy naming another, CANARYFLOW_TRAFFIC_ROUTERS). replica-ratio needs none: it
scales Deployments. Forward (executor): make the per-track Services and the router's objects,
wait for a ready endpoint, move the weights. Back (rollback): every user on stable, then the
per-track Services removed and the router's objects given back.
*/}}
{{- define "canaryflow.weightedRouters" -}}
{{- $routers := .Values.traffic.routers -}}
{{- if or (has "traefik" $routers) (has "gateway-api" $routers) }}true{{ end -}}
{{- end -}}

{{- define "canaryflow.rules.routersForward" -}}
{{- $routers := .Values.traffic.routers -}}
{{- if include "canaryflow.weightedRouters" . }}
- apiGroups: [""]
  resources: ["services"]  # the per-track Services made and removed; the target's own read
  verbs: ["get", "list", "create", "patch", "delete"]
- apiGroups: ["discovery.k8s.io"]
  resources: ["endpointslices"]  # a track gets a weight once its Service has a ready endpoint
  verbs: ["list"]
{{- end }}
{{- if has "traefik" $routers }}
- apiGroups: ["traefik.io"]
  resources: ["traefikservices"]  # the weighted sticky service: made or taken over, given back
  verbs: ["get", "create", "update", "patch"]
- apiGroups: ["traefik.io"]
  resources: ["ingressroutes"]  # the route of matched requests (header, cookie) to the canary
  verbs: ["list", "create", "patch", "delete"]
{{- end }}
{{- if has "gateway-api" $routers }}
- apiGroups: ["gateway.networking.k8s.io"]
  resources: ["httproutes"]  # the target's route: taken over, weighted, given back
  verbs: ["get", "update", "patch"]
{{- end }}
{{- end -}}

{{- define "canaryflow.rules.routersBack" -}}
{{- $routers := .Values.traffic.routers -}}
{{- if include "canaryflow.weightedRouters" . }}
- apiGroups: [""]
  resources: ["services"]  # the per-track Services removed; the target's own read
  verbs: ["get", "list", "delete"]
{{- end }}
{{- if has "traefik" $routers }}
- apiGroups: ["traefik.io"]
  resources: ["traefikservices"]  # the canary's weight to 0, then given back
  verbs: ["get", "update", "patch"]
- apiGroups: ["traefik.io"]
  resources: ["ingressroutes"]  # the match route to the canary deleted first
  verbs: ["delete"]
{{- end }}
{{- if has "gateway-api" $routers }}
- apiGroups: ["gateway.networking.k8s.io"]
  resources: ["httproutes"]  # the canary's weight to 0, then the rules given back
  verbs: ["get", "update", "patch"]
{{- end }}
{{- end -}}
