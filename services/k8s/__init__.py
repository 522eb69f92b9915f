"""Kubernetes deployment of the services: rendering the manifests under ``k8s/`` (kustomize, offline),
applying them with the official client and reporting the pipeline's state (``cai k8s``)."""
