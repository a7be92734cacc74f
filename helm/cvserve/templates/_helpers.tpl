{{/* Chart name, overridable with nameOverride. */}}
{{- define "cvserve.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name: RELEASE-NAME, truncated to the 63 characters DNS names allow. */}}
{{- define "cvserve.fullname" -}}
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

{{- define "cvserve.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels every resource carries. */}}
{{- define "cvserve.labels" -}}
helm.sh/chart: {{ include "cvserve.chart" . }}
{{ include "cvserve.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: cvserve
{{- end }}

{{/* Labels that select the Triton pods (immutable in a Deployment: never add to them). */}}
{{- define "cvserve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cvserve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: triton
{{- end }}

{{- define "cvserve.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "cvserve.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "cvserve.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository .Values.image.tag }}
{{- end }}
{{- end }}

{{/* Labels Prometheus uses to pick up the ServiceMonitor and PrometheusRule. */}}
{{- define "cvserve.monitoringLabels" -}}
{{ include "cvserve.labels" . }}
{{- with .Values.monitoring.selectorLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
The model repository, checked once: returns the path or URI Triton gets in --model-repository.
Every misconfiguration stops the render with a message saying what to set.
*/}}
{{- define "cvserve.modelRepositoryPath" -}}
{{- $repo := .Values.modelRepository }}
{{- $type := required "modelRepository.type is required: set it to pvc (an existing PersistentVolumeClaim), s3 or gs (a bucket URI in modelRepository.uri) or sync (an init container copies the repository); see docs/deploy.md" $repo.type }}
{{- if eq $type "pvc" }}
{{- $_ := required "modelRepository.pvc.claimName is required when modelRepository.type is pvc" $repo.pvc.claimName }}
{{- "/models" }}
{{- else if or (eq $type "s3") (eq $type "gs") }}
{{- $uri := required (printf "modelRepository.uri is required when modelRepository.type is %s (e.g. %s://bucket/path)" $type $type) $repo.uri }}
{{- if not (hasPrefix (printf "%s://" $type) $uri) }}
{{- fail (printf "modelRepository.uri %q must start with %s:// when modelRepository.type is %s" $uri $type $type) }}
{{- end }}
{{- if .Values.modelConfigOverrides }}
{{- fail (printf "modelConfigOverrides need a local repository, but modelRepository.type is %s: use type sync (copy the bucket into the pod) or pvc" $type) }}
{{- end }}
{{- $uri }}
{{- else if eq $type "sync" }}
{{- $_ := required "modelRepository.sync.image is required when modelRepository.type is sync" $repo.sync.image }}
{{- if not $repo.sync.command }}
{{- fail "modelRepository.sync.command is required when modelRepository.type is sync: a command that fills /models" }}
{{- end }}
{{- "/models" }}
{{- end }}
{{- end }}

{{/* Where Triton reads the repository: the overlay with config overrides applied, or the source itself. */}}
{{- define "cvserve.tritonRepository" -}}
{{- if .Values.modelConfigOverrides }}
{{- "/models-overlay" }}
{{- else }}
{{- include "cvserve.modelRepositoryPath" . }}
{{- end }}
{{- end }}

{{/*
The pod's grace period: from deletion to SIGKILL Kubernetes runs the preStop sleep, then Triton drains
in-flight requests for up to --exit-timeout-secs, then unloads models and stops the python stubs. Derived
when terminationGracePeriodSeconds is empty; a value given must leave room for the drain.
*/}}
{{- define "cvserve.terminationGracePeriodSeconds" -}}
{{- $drain := add (int .Values.triton.exitTimeoutSeconds) (int .Values.probes.preStopSleepSeconds) }}
{{- $grace := .Values.terminationGracePeriodSeconds }}
{{- if kindIs "invalid" $grace }}
{{- add $drain 15 }}
{{- else if le (int $grace) $drain }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be greater than probes.preStopSleepSeconds + triton.exitTimeoutSeconds (%d): Kubernetes would SIGKILL Triton while it still drains in-flight requests; leave it empty to derive it (%d)" (int $grace) $drain (add $drain 15)) }}
{{- else }}
{{- int $grace }}
{{- end }}
{{- end }}

{{/* "true" when a probe runs files/triton_probe.py inside the container (canary, or HTTP on localhost). */}}
{{- define "cvserve.probeScriptNeeded" -}}
{{- if or .Values.probes.liveness.canary.model (eq .Values.http.listen "localhost") }}true{{ end }}
{{- end }}
