FROM python:3.11-slim

WORKDIR /app
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1

# The CPU build of torch; the default index would pull a CUDA build of several GB.
COPY requirements.lock ./
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0 \
 && grep -v '^torch==' requirements.lock > /tmp/requirements.txt \
 && pip install --no-deps -r /tmp/requirements.txt

COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY adapters ./adapters
COPY trainer ./trainer
COPY clients ./clients
RUN pip install --no-deps .

EXPOSE 8000
CMD ["convention-gateway", "serve", "--host", "0.0.0.0"]
