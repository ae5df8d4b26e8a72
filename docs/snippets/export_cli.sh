orchestra export docker-compose flow.yml docker-compose.yml
orchestra export kubernetes flow.yml ./k8s
orchestra export schema -o orchestra.schema.json
