# One image for every Herald role; docker-compose.yml picks the command.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md alembic.ini celeryconfig.py gunicorn.conf.py ./
COPY core core
COPY api api
COPY workers workers
COPY providers providers
COPY models models
COPY services services
COPY herald herald
COPY migrations migrations
COPY sandbox sandbox
COPY bench bench
RUN pip install --no-cache-dir . && useradd --create-home herald
USER herald
# gunicorn must not face clients directly (slow clients hold its threads): publish the
# buffering proxy of deploy/nginx.conf instead, as docker-compose.yml does.
EXPOSE 8000
CMD ["gunicorn", "--bind", "0.0.0.0:8000", "--workers", "4", "--threads", "8", "api:create_app()"]
