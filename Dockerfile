# EdgeTally: one image for every tier (`edgetally gateway run`, `edgetally cloud run`, ...).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY protocol ./protocol
COPY devices ./devices
COPY gateway ./gateway
COPY cloud ./cloud
COPY edgetally ./edgetally
COPY elections ./elections
RUN pip install --no-cache-dir '.[postgres]'
ENTRYPOINT ["edgetally"]
