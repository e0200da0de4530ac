# The smallest image that runs the Kelpie agent: nothing but the `kelpie` binary (no shell, no C
# library, no /tmp: it brings what it needs). Useful when the job's program is itself a static
# executable, copied in beside it.
#
#   docker build --build-arg KELPIE_VERSION=0.1.0 -f examples/scratch.Dockerfile -t my-image examples/
FROM scratch

ARG KELPIE_VERSION=0.1.0
ARG KELPIE_URL=https://github.com/SaladTechnologies/kelpie/releases/download/${KELPIE_VERSION}/kelpie

# --chmod: ADD from a URL writes mode 0600, and there is no shell here to `RUN chmod`.
ADD --chmod=755 ${KELPIE_URL} /kelpie
# COPY my-static-program /app/my-static-program

CMD ["/kelpie"]
