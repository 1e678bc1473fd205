/* SPDX-License-Identifier: MIT */
/*
 * vpipe_jni.c -- the native half of org.vpipe.VPipe: descriptors out of NIO channels, calls into
 * libvpipe. The Java half checks arguments and turns -errno into exceptions.
 *
 * Descriptors: the JDK's FileChannelImpl and SocketChannelImpl each keep their descriptor in a
 * java.io.FileDescriptor field named "fd", whose int field "fd" is the number. JNI's field access
 * is not subject to the module system's access checks, so this needs no --add-opens. A channel
 * of another implementation (no such field) gets UnsupportedOperationException.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <jni.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include <vpipe/vpipe.h>

#include "org_vpipe_VPipe.h"

static jfieldID fd_int_field(JNIEnv *env)
{
	static jfieldID id;
	if (!id) {
		jclass c = (*env)->FindClass(env, "java/io/FileDescriptor");
		if (!c)
			return NULL;
		id = (*env)->GetFieldID(env, c, "fd", "I");
	}
	return id;
}

/* The descriptor behind a channel, or -1 with a Java exception pending. */
static int channel_fd(JNIEnv *env, jobject ch)
{
	jclass cls = (*env)->GetObjectClass(env, ch);
	jfieldID f = (*env)->GetFieldID(env, cls, "fd", "Ljava/io/FileDescriptor;");
	if (!f) {
		(*env)->ExceptionClear(env);
		jclass u = (*env)->FindClass(env, "java/lang/UnsupportedOperationException");
		if (u)
			(*env)->ThrowNew(env, u, "vPipe needs the JDK's own FileChannel/SocketChannel "
			                         "(no FileDescriptor field 'fd' in this channel class)");
		return -1;
	}
	jobject fdo = (*env)->GetObjectField(env, ch, f);
	jfieldID fi = fd_int_field(env);
	if (!fi)
		return -1;
	int fd = fdo ? (*env)->GetIntField(env, fdo, fi) : -1;
	if (fd < 0) {
		jclass c = (*env)->FindClass(env, "java/nio/channels/ClosedChannelException");
		if (c)
			(*env)->ThrowNew(env, c, NULL);
		return -1;
	}
	return fd;
}

static jlong ret(ssize_t n)
{
	return n >= 0 ? (jlong)n : -(jlong)(errno ? errno : EIO);
}

JNIEXPORT jlong JNICALL Java_org_vpipe_VPipe_nFileToSocket(JNIEnv *env, jclass cls, jobject src, jlong pos,
                                                           jlong count, jobject dst)
{
	(void)cls;
	int in = channel_fd(env, src);
	if (in < 0)
		return 0;
	int out = channel_fd(env, dst);
	if (out < 0)
		return 0;
	return ret(vpipe_file_to_socket_fd(in, out, (off_t)pos, (size_t)count));
}

JNIEXPORT jlong JNICALL Java_org_vpipe_VPipe_nSocketToFile(JNIEnv *env, jclass cls, jobject src, jobject dst,
                                                           jlong pos, jlong count)
{
	(void)cls;
	int in = channel_fd(env, src);
	if (in < 0)
		return 0;
	int out = channel_fd(env, dst);
	if (out < 0)
		return 0;
	return ret(vpipe_socket_to_file_fd(in, out, (off_t)pos, (size_t)count));
}

JNIEXPORT jlong JNICALL Java_org_vpipe_VPipe_nSocketToSocket(JNIEnv *env, jclass cls, jobject src, jobject dst,
                                                             jlong count)
{
	(void)cls;
	int in = channel_fd(env, src);
	if (in < 0)
		return 0;
	int out = channel_fd(env, dst);
	if (out < 0)
		return 0;
	return ret(vpipe_socket_to_socket_fd(in, out, (size_t)count));
}

JNIEXPORT jlong JNICALL Java_org_vpipe_VPipe_nFileToFile(JNIEnv *env, jclass cls, jobject src, jlong src_pos,
                                                         jlong count, jobject dst, jlong dst_pos)
{
	(void)cls;
	int in = channel_fd(env, src);
	if (in < 0)
		return 0;
	int out = channel_fd(env, dst);
	if (out < 0)
		return 0;
	return ret(vpipe_file_to_file_fd(in, out, (off_t)src_pos, (size_t)count, (off_t)dst_pos));
}

JNIEXPORT jint JNICALL Java_org_vpipe_VPipe_nAccessMode(JNIEnv *env, jclass cls, jobject ch)
{
	(void)cls;
	int fd = channel_fd(env, ch);
	if (fd < 0)
		return 0;
	int fl = fcntl(fd, F_GETFL);
	return fl < 0 ? -errno : (fl & O_ACCMODE);
}

JNIEXPORT jboolean JNICALL Java_org_vpipe_VPipe_nIsInet6(JNIEnv *env, jclass cls, jobject ch)
{
	(void)cls;
	int fd = channel_fd(env, ch);
	if (fd < 0) {
		(*env)->ExceptionClear(env);
		return JNI_FALSE;
	}
	int domain = 0;
	socklen_t l = sizeof(domain);
	return getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &l) == 0 && domain == AF_INET6 ? JNI_TRUE : JNI_FALSE;
}

JNIEXPORT jstring JNICALL Java_org_vpipe_VPipe_nLastResult(JNIEnv *env, jclass cls, jlongArray out)
{
	(void)cls;
	struct vpipe_result r;
	memset(&r, 0, sizeof(r));
	vpipe_last_result(&r);
	jlong v[10] = {r.path,         r.error,          (jlong)r.moved,    (jlong)r.offloaded,  (jlong)r.guest_copied,
	               (jlong)r.zero_filled, (jlong)r.requests, (jlong)r.paths, (jlong)r.hdtr_moved, 0};
	(*env)->SetLongArrayRegion(env, out, 0, 10, v);
	return (*env)->NewStringUTF(env, r.reason ? r.reason : "");
}

JNIEXPORT jstring JNICALL Java_org_vpipe_VPipe_nLastReason(JNIEnv *env, jclass cls)
{
	(void)cls;
	struct vpipe_result r;
	memset(&r, 0, sizeof(r));
	vpipe_last_result(&r);
	return (*env)->NewStringUTF(env, r.reason ? r.reason : "");
}

JNIEXPORT jboolean JNICALL Java_org_vpipe_VPipe_nSetFallback(JNIEnv *env, jclass cls, jboolean enabled)
{
	(void)env;
	(void)cls;
	return vpipe_set_fallback(enabled ? 1 : 0) ? JNI_TRUE : JNI_FALSE;
}

JNIEXPORT jlong JNICALL Java_org_vpipe_VPipe_nMinOffload(JNIEnv *env, jclass cls)
{
	(void)env;
	(void)cls;
	return (jlong)vpipe_min_offload();
}

JNIEXPORT jlong JNICALL Java_org_vpipe_VPipe_nSetMinOffload(JNIEnv *env, jclass cls, jlong bytes)
{
	(void)env;
	(void)cls;
	return (jlong)vpipe_set_min_offload((uint64_t)bytes);
}

JNIEXPORT void JNICALL Java_org_vpipe_VPipe_nStats(JNIEnv *env, jclass cls, jlongArray out)
{
	(void)cls;
	struct vpipe_stats s;
	memset(&s, 0, sizeof(s));
	vpipe_get_stats(&s);
	jlong v[9] = {(jlong)s.ops,           (jlong)s.ops_offloaded,   (jlong)s.ops_fallback,
	              (jlong)s.ops_failed,    (jlong)s.ops_below_threshold, (jlong)s.bytes_offloaded,
	              (jlong)s.bytes_guest,   (jlong)s.bytes_zero_filled, (jlong)s.ops_guest_cache};
	(*env)->SetLongArrayRegion(env, out, 0, 9, v);
}

JNIEXPORT jstring JNICALL Java_org_vpipe_VPipe_nErrnoName(JNIEnv *env, jclass cls, jint err)
{
	(void)cls;
	const char *n = strerrorname_np(err);
	char buf[32];
	if (!n) {
		snprintf(buf, sizeof(buf), "errno %d", (int)err);
		n = buf;
	}
	return (*env)->NewStringUTF(env, n);
}

JNIEXPORT jstring JNICALL Java_org_vpipe_VPipe_nStrerror(JNIEnv *env, jclass cls, jint err)
{
	(void)cls;
	const char *d = strerrordesc_np(err);
	return (*env)->NewStringUTF(env, d ? d : "unknown error");
}
