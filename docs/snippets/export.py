from orchestra_nb import Deployment, Flow

f = Flow.load_config("flow.yml")
f.to_docker_compose_yaml("docker-compose.yml")  # one file, plus build contexts for the images
f.to_kubernetes_yaml("k8s")  # manifests and build.sh; then `kubectl apply -f k8s`

dep = Deployment.load_config("deployment.yml")
dep.to_docker_compose_yaml("deployment-compose.yml")
